"""`KG_SUBMIT=1 indexctl build` submits the run to the instance (its queue), the instance's daemon launches it in a
process of its own, and indexctl waits for it and prints the outcome and exit code as an in-process build does."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kg_assets.cli.runs import INSTANCE_TEMPLATE
from kg_assets_tests.conftest import INDEXCTL
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


@pytest.fixture
def daemon(cli_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """`dagster-daemon run` on the instance indexctl uses (<root>/.dagster, seeded as indexctl seeds it)."""
    home = Path(cli_env["KG_INDEXES_DIR"]) / ".dagster"
    home.mkdir(parents=True)
    shutil.copyfile(INSTANCE_TEMPLATE, home / "dagster.yaml")
    env = {**cli_env, "DAGSTER_HOME": str(home)}
    command = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "kg_assets.definitions"]
    with open(tmp_path / "daemon.log", "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "QueuedRunCoordinatorDaemon" not in (tmp_path / "daemon.log").read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-2000:]
            time.sleep(0.5)  # its storage is created before indexctl submits (sqlite schemas race otherwise)
        yield {**cli_env, "KG_SUBMIT": "1"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the daemon ignores SIGTERM from a non-interactive parent
        proc.wait(30)


def test_submitted_build_runs_under_the_daemon_and_reports_like_an_in_process_one(
    daemon: dict[str, str], tmp_path: Path
) -> None:
    import dagster as dg

    repo = write_repo(tmp_path / "repo")
    built = subprocess.run(
        [*INDEXCTL, "build", "v1", "--repo", str(repo), "--shards", "2", "--publish"],
        env=daemon,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, built.stderr
    assert "(2 shards)" in built.stdout and "Published v1" in built.stdout
    again = subprocess.run([*INDEXCTL, "build", "v1", "--repo", str(repo)], env=daemon, capture_output=True, text=True)
    assert again.returncode == 5 and "already exists" in again.stderr
    home = Path(daemon["KG_INDEXES_DIR"]) / ".dagster"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs(filters=dg.RunsFilter(job_name="build"))
        assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["kg/source"] == "indexctl-submit"
        assert "kg/pid" not in run.tags  # not the reaper's: it does not die with indexctl
