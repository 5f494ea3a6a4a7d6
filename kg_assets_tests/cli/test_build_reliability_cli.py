"""Issue 11 for `indexctl build`: a SIGKILLed build leaves no indexer running and nothing gc cannot clean; issue 15:
a shard step killed mid-embedding is resumed (`build --resume`) into the version an unsharded build makes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from kg_assets.lib import build
from kg_assets.lib.lifecycle import WORK_RECORD, LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.conftest import INDEXCTL
from kg_assets_tests.defs.test_sharded_build import version_contents
from kg_assets_tests.helpers import SCIP_PYTHON, run_build
from kg_assets_tests.lib.test_remote_embedding import EmbeddingServer, serving
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def _children_running(parent: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and name.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_build_leaves_no_indexer_and_gc_cleans_its_scratch(cli_env: dict[str, str], tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    build = subprocess.Popen(
        [*INDEXCTL, "build", "v1", "--repo", str(repo)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (indexers := _children_running(build.pid, "scip-python")):
        assert build.poll() is None and time.monotonic() < deadline, "the build never started scip-python"
        time.sleep(0.05)
    build.send_signal(signal.SIGKILL)
    build.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in indexers):
        assert time.monotonic() < deadline, f"scip-python {indexers} outlived the killed build"
        time.sleep(0.05)
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    assert list((root.root / ".scratch").iterdir())  # the copy scip-python indexed, under the root, not /tmp
    done = indexctl(cli_env, "gc", "--staging-max-age", "0")
    assert done.returncode == 0, done.stderr
    assert not list((root.root / ".scratch").iterdir()) and not root.staging_dir("v1").exists()
    assert not os.listdir(root.versions_dir)


@pytest.fixture
def embedding_server() -> Iterator[EmbeddingServer]:
    with serving() as server:
        yield server


def _step_process(instance: dg.DagsterInstance, version: str, step_key: str) -> tuple[dg.DagsterRun, int]:
    """The version's latest build run and the pid of the process running its step `step_key` (as the step's
    STEP_START event records it; waited for, since the step writes it while starting)."""
    deadline = time.monotonic() + 60
    while True:
        (run, *_) = instance.get_runs(dg.RunsFilter(job_name="build", tags={"dagster/partition": version}), limit=1)
        starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        pids = {e.dagster_event.step_key: e.dagster_event.pid for e in starts}
        if step_key in pids:
            return run, pids[step_key]
        assert time.monotonic() < deadline, f"{step_key} never recorded its start"
        time.sleep(0.05)


def test_a_shard_step_killed_mid_embedding_is_resumed_into_the_unsharded_version(
    cli_env: dict[str, str], tmp_path: Path, embedding_server: EmbeddingServer
) -> None:
    server = embedding_server
    repo, work = write_repo(tmp_path / "repo"), tmp_path / "work"
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    settings = ["--embedder", server.spec, "--shards", "2", "--factory", "IVF4,Flat", "--work-dir", str(work)]
    server.hold = "def hypotenuse"  # shapes/geometry.py, in the second of the two shards
    env = {**cli_env, "KG_EXECUTOR": "multiprocess", "KG_MAX_CONCURRENT": "2"}  # every step in its own process
    with (tmp_path / "stderr").open("w") as stderr:
        building = subprocess.Popen(
            [*INDEXCTL, "build", "v1", "--repo", str(repo), *settings],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        assert server.held.wait(300), "no shard step reached the embedding server"  # s1 is waiting for its vectors
        with dg.DagsterInstance.from_config(str(root.root / ".dagster")) as instance:
            failed, pid = _step_process(instance, "v1", "embeddings.embed_shard[s1]")
        lease = root.build_lease("v1")  # held across the run's step processes
        assert (lease["run_id"], lease["host"]) == (failed.run_id, socket.gethostname())
        os.kill(pid, signal.SIGKILL)
        server.released.set()
        assert building.wait(300) == 1
    message = (tmp_path / "stderr").read_text().strip().splitlines()[-1]
    assert message == (
        "indexctl: error: step embeddings.embed_shard[s1] failed: its process was terminated by signal 9 (SIGKILL); "
        "once fixed, `indexctl build v1 --resume` re-runs the failed steps"
    )
    assert root.build_lease("v1") is None  # the killed step never ran its failure hook: indexctl released it
    shards = work / "v1" / build.SHARDS_DIR
    assert (shards / "0000.npy").is_file() and not (shards / "0001.npy").exists()

    server.hold = None
    refused = indexctl(cli_env, "build", "v1", "--resume", "--shards", "3")
    assert refused.returncode == 2 and "drop --shards" in refused.stderr
    done = indexctl(cli_env, "build", "v1", "--resume", "--json")  # in-process this time: no KG_EXECUTOR
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shards"] == 2 and summary["embedded"] == summary["chunks"]
    with dg.DagsterInstance.from_config(str(root.root / ".dagster")) as instance:
        resumed = instance.get_runs(dg.RunsFilter(job_name="build"), limit=1)[0]
        steps = {e.step_key for e in instance.all_logs(resumed.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)}
    assert resumed.parent_run_id == failed.run_id and resumed.tags["dagster/partition"] == "v1"
    assert "embeddings.embed_shard[s1]" in steps and "index_version" in steps
    assert not steps & {"chunks", "scip_index", "lexical_index", "embeddings.embed_shard[s0]"}
    assert root.build_lease("v1") is None and not (work / "v1").exists()  # sealing released and removed both
    assert WORK_RECORD not in root.read_manifest("v1")["files"]

    unsharded = LifecycleRoot(tmp_path / "unsharded")
    with dg.instance_for_test() as instance:
        assert run_build(unsharded, repo, "v1", instance, embedder=server.spec, shards=1, factory="IVF4,Flat").success
    got, expected = version_contents(root, "v1"), version_contents(unsharded, "v1")
    assert np.array_equal(got["ids"], expected["ids"]) and np.array_equal(got["rows"], expected["rows"])
    np.testing.assert_array_equal(got["vectors"], expected["vectors"])
    assert np.array_equal(got["top10"], expected["top10"])
