"""indexctl on a real distributed setup on one machine: Redis and PostgreSQL from Debian's packages (started by
scripts/services.sh on loopback), two Celery workers (dagster-celery), the instance on PostgreSQL. A sharded build
runs its shard steps in different worker processes, then publish and rollback; the run history is in PostgreSQL.

Runs where the services are installed or installable (root with apt-get) and always under CI=true; it starts
and stops everything itself and leaves no process behind."""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kg_assets_tests.helpers import REPO, SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo

SERVICES = REPO / "scripts" / "services.sh"
INDEXCTL = [sys.executable, "-m", "kg_assets.cli.main"]
DAGSTER_CELERY = Path(sys.executable).parent / "dagster-celery"


def services_available() -> bool:
    """dagster-celery installed (the `scale` extra) and the services installed or installable."""
    installed = shutil.which("redis-server") and glob.glob("/usr/lib/postgresql/*/bin/initdb")
    installable = os.geteuid() == 0 and shutil.which("apt-get")
    return importlib.util.find_spec("dagster_celery") is not None and bool(installed or installable)


pytestmark = [
    pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python"),
    pytest.mark.skipif(
        os.environ.get("CI") != "true" and not services_available(),
        reason="needs the scale extra (KG_SCALE_TESTS=1 scripts/setup.sh) and redis-server and postgresql (or root)",
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(log: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while "ready." not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")[-2000:]
        assert time.monotonic() < deadline, f"worker not ready: {log.read_text(errors='replace')[-2000:]}"
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the worker's process group (Celery's warm shutdown), SIGKILL what is left after 30 s."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the pool's children share the group: wait until none is left
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            return


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    """Redis + PostgreSQL on loopback, a PostgreSQL-backed $DAGSTER_HOME, two single-process Celery workers;
    yields indexctl's environment and the lifecycle root."""
    base = tmp_path_factory.mktemp("distributed")
    services = Path(tempfile.mkdtemp(prefix="kg-services-"))  # outside pytest's 0700 dirs: postgres reads it
    started = subprocess.run(
        ["bash", str(SERVICES), "start", str(services), str(free_port()), str(free_port())],
        capture_output=True,
        text=True,
        timeout=900,
    )
    workers: list[subprocess.Popen] = []
    try:
        assert started.returncode == 0, started.stderr
        urls = dict(line.split("=", 1) for line in started.stdout.split())
        home = base / "dagster"
        home.mkdir()
        shutil.copyfile(REPO / "deploy" / "dagster.postgres.yaml", home / "dagster.yaml")
        config = base / "celery.yaml"
        broker = urls["KG_CELERY_BROKER"]
        config.write_text(f"execution:\n  config:\n    broker: {broker}\n    backend: {broker}\n")
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("CODEINTEL_INDEXES_DIR",)},
            **urls,
            "DAGSTER_HOME": str(home),
            "KG_EXECUTOR": "celery",
            "KG_INDEXES_DIR": str(base / "indexes"),
            "KG_PROGRESS": "0",
            "PATH": f"{DAGSTER_CELERY.parent}{os.pathsep}{os.environ.get('PATH', '')}",  # dagster-celery runs `celery`
        }
        for i in (1, 2):
            log = base / f"worker{i}.log"
            command = [str(DAGSTER_CELERY), "worker", "start", "-A", "dagster_celery.app", "-y", str(config)]
            command += ["-n", f"kg{i}@%h", "--", "--concurrency", "1", "--prefetch-multiplier", "1", "-O", "fair"]
            with open(log, "wb") as out:
                workers.append(
                    subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                )
            wait_ready(log, workers[-1])
        yield env, base / "indexes"
    finally:
        for worker in workers:
            stop_group(worker)
        subprocess.run(["bash", str(SERVICES), "stop", str(services)], capture_output=True, timeout=120)
        shutil.rmtree(services, ignore_errors=True)
        for worker in workers:  # nothing of the workers is left
            with pytest.raises(ProcessLookupError):
                os.killpg(worker.pid, 0)


def indexctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INDEXCTL, *args], env=env, capture_output=True, text=True, timeout=900)


def test_sharded_build_on_celery_workers_publishes_rolls_back_with_history_in_postgres(
    cluster: tuple[dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dagster as dg

    env, root = cluster
    repo = write_repo(tmp_path / "repo")
    built = indexctl(env, "build", "v1", "--repo", str(repo), "--shards", "2", "--publish")
    assert built.returncode == 0, built.stderr
    assert "(2 shards)" in built.stdout and "Published v1" in built.stdout
    (repo / "parsing.py").write_text((repo / "parsing.py").read_text().replace("Split a sentence", "Cut a sentence"))
    assert indexctl(env, "build", "v2", "--repo", str(repo), "--shards", "2").returncode == 0
    for verb, version in (("publish", "v2"), ("rollback", "v1")):
        done = indexctl(env, verb, version)
        assert done.returncode == 0, done.stderr
    assert (root / "CURRENT").read_text() == "v1"
    searched = indexctl(env, "search", "length of the hypotenuse", "-k", "1", "--json")
    assert searched.returncode == 0 and '"shapes/geometry.py"' in searched.stdout

    for key in ("DAGSTER_HOME", "KG_DAGSTER_PG_URL"):
        monkeypatch.setenv(key, env[key])
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = instance.get_runs()
        assert sorted(r.job_name for r in runs) == ["build", "build", "publish", "rollback"]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for run in (r for r in runs if r.job_name == "build"):
            starts = [
                e
                for e in instance.all_logs(run.run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"
            ]
            shard_pids = {e.dagster_event.pid for e in starts if "embed_shard[" in (e.step_key or "")}
            assert len(shard_pids) == 2 and int(run.tags["kg/pid"]) not in shard_pids  # two worker processes
