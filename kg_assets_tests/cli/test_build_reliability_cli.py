"""Issue 11 for `indexctl build`: a SIGKILLed build leaves no indexer running and nothing gc cannot clean; issue 15:
a shard step killed mid-embedding is resumed (`build --resume`) into the version an unsharded build makes, and the
merge refuses (exit 4) a shard encoded into an index trained otherwise than the build's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import dagster as dg
import numpy as np
import pytest

from kg_assets.lib import build, workdir
from kg_assets.lib.embedding import MiniLMOnnx
from kg_assets.lib.fsutil import exclusive_lock
from kg_assets.lib.lifecycle import WORK_RECORD, LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.conftest import INDEXCTL, published_state, stage_sample
from kg_assets_tests.defs.test_sharded_build import version_contents
from kg_assets_tests.helpers import SCIP_PYTHON, run_build
from kg_assets_tests.lib.test_remote_embedding import EmbeddingServer, serving
from kg_assets_tests.lib.test_shards import encoded_shard, trained_differently, trained_otherwise
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_running_step_exits_130(cli_env: dict[str, str], tmp_path: Path, sig: int) -> None:
    repo = write_repo(tmp_path / "repo")
    build = subprocess.Popen(
        [*INDEXCTL, "build", "v1", "--repo", str(repo)], env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    while not _children_running(build.pid, "scip-python"):  # the embed step is running
        assert build.poll() is None and time.monotonic() < deadline, "the build never started scip-python"
        time.sleep(0.05)
    build.send_signal(sig)
    _, stderr = build.communicate(timeout=60)
    assert build.returncode == 130, stderr
    (line,) = stderr.decode().strip().splitlines()
    assert line == "indexctl: interrupted (a signal stopped embeddings.embed_shard[s0])"
    assert LifecycleRoot(cli_env["KG_INDEXES_DIR"]).list_versions() == []


@pytest.fixture
def embedding_server() -> Iterator[EmbeddingServer]:
    with serving() as server:
        yield server


def _start_build(repo: Path, settings: list[str], env: dict[str, str], stderr: IO[str]) -> subprocess.Popen[bytes]:
    """`indexctl build v1 --repo REPO SETTINGS` in the background, its stderr into `stderr`."""
    return subprocess.Popen(
        [*INDEXCTL, "build", "v1", "--repo", str(repo), *settings], env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )


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
        building = _start_build(repo, settings, env, stderr)
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


def _steps(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> set[str]:
    return {e.dagster_event.step_key for e in instance.all_logs(run_id, of_type=kind)}


def _others(root: LifecycleRoot, version: str) -> dict[str, object]:
    """`published_state` without `version`'s own staging directory or version: what its build must not move."""
    state = published_state(root)
    mine = (f"versions/{version}/", f"versions/{version}.staging/")
    state["files"] = {path: data for path, data in state["files"].items() if not path.startswith(mine)}
    state["dirs"] = [d for d in state["dirs"] if d not in (version, f"{version}.staging")]
    return state


def test_merge_refuses_a_shard_encoded_into_another_trained_index(
    cli_env: dict[str, str], tmp_path: Path, samples: dict
) -> None:
    """A shard's index in the step outputs that was encoded into an index trained otherwise than the build's (other
    coarse centroids, or only another PQ codebook) is refused by the merge, exit 4 with one line naming what
    differs: in the build that meets it and in `--resume`, which re-runs the merge alone. Nothing published or
    sealed moves, and with the shards as encoded the same run's resume seals the version. The build's merge step
    (its own process) is paused on the version's lock, which every build step takes first: the test holds it from
    the encode steps' success until it has replaced shard 1's index. (A replaced shard 0, which `build.merge_shards`
    refuses against the trained index, is tested on the engine: `lib/test_shards.py`.)"""
    repo, work = write_repo(tmp_path / "repo"), tmp_path / "work"
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    stage_sample(root, "v0", samples["a"])
    root.publish("v0")
    before = _others(root, "v1")
    factory = "IVF4,PQ96x4fs,RFlat"  # the auto choice's kind at scale (IVF, 4-bit PQ, exact re-rank), on 16 chunks
    settings = ["--shards", "2", "--factory", factory, "--work-dir", str(work)]
    env = {**cli_env, "KG_EXECUTOR": "multiprocess", "KG_MAX_CONCURRENT": "2"}  # every step in its own process
    encodes = {"faiss_index.encode_shard[s0]", "faiss_index.encode_shard[s1]"}
    index = {shard: build.shard_file(work / "v1", shard, ".index") for shard in (0, 1)}
    other = trained_otherwise(factory, MiniLMOnnx.dim)  # the default embedder's; trained before the pause
    with (tmp_path / "stderr").open("w") as stderr:
        building = _start_build(repo, settings, env, stderr)
        deadline = time.monotonic() + 300
        while root.build_lease("v1") is None:  # the first step took it: the instance and the run exist
            assert building.poll() is None and time.monotonic() < deadline, "the build never started"
            time.sleep(0.05)
        with dg.DagsterInstance.from_config(str(root.root / ".dagster")) as instance:
            while True:
                runs = instance.get_runs(dg.RunsFilter(job_name="build", tags={"dagster/partition": "v1"}), limit=1)
                if runs and encodes <= _steps(instance, runs[0].run_id, dg.DagsterEventType.STEP_SUCCESS):
                    break
                assert building.poll() is None and time.monotonic() < deadline, "the encode steps never succeeded"
                time.sleep(0.05)
            # The merge step's process is still starting: a new interpreter importing the definitions (its
            # STEP_START came 4 s after this point at load 8 here, and it takes the lock only after that). Once the
            # lock is ours and the merge has not started, it cannot have read a shard.
            with exclusive_lock(root.root / ".locks" / "v1.lock", 0, "the test"):
                started = _steps(instance, runs[0].run_id, dg.DagsterEventType.STEP_START)
                assert "faiss_index.merge_shards" not in started, "the merge started before the test held the lock"
                encoded = {shard: path.read_bytes() for shard, path in index.items()}
                workdir.write_index(index[1], encoded_shard(work / "v1", 1, other))
        assert building.wait(300) == 4
    described = "IVF4,PQ96x4fs,Refine(Flat)"  # the factory as the merge reads it back from the index's structure
    refusal = (
        f"indexctl: error: shard 1 was trained with a different {{}} than shard 0 ({described}); rebuild the version"
    )
    assert (tmp_path / "stderr").read_text().strip().splitlines()[-1] == refusal.format("coarse quantizer")
    assert root.build_lease("v1") is None and not root.version_dir("v1").exists()
    assert _others(root, "v1") == before

    workdir.write_index(index[1], encoded_shard(work / "v1", 1, trained_differently(work / "v1", "PQ codebook")))
    refused = indexctl(cli_env, "build", "v1", "--resume")
    assert refused.returncode == 4 and refused.stderr.strip().splitlines() == [refusal.format("PQ codebook")]
    with dg.DagsterInstance.from_config(str(root.root / ".dagster")) as instance:
        resumed = instance.get_runs(dg.RunsFilter(job_name="build"), limit=1)[0]
        assert resumed.parent_run_id == runs[0].run_id
        assert _steps(instance, resumed.run_id, dg.DagsterEventType.STEP_START) == {"faiss_index.merge_shards"}
    assert root.build_lease("v1") is None and not root.version_dir("v1").exists()
    assert _others(root, "v1") == before

    index[1].write_bytes(encoded[1])  # the shards as their encode steps wrote them
    done = indexctl(cli_env, "build", "v1", "--resume", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["shards"] == 2 and root.read_manifest("v1")["attrs"]["faiss_ntotal"] > 10
    assert _others(root, "v1") == before  # v0 still current, its files and the history as they were


def test_a_work_dir_the_build_did_not_create_is_never_written_nor_removed(
    sample_versions: LifecycleRoot, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 20 item 1: `--work-dir D` puts step outputs in `D/<version>`, which must be absent, empty or the build's
    own, and may not overlap the repository or the root's versions; anything else is a usage error (exit 2) before
    any run, with nothing written or removed."""
    root = sample_versions
    repo = write_repo(tmp_path / "repo")
    taken = tmp_path / "work" / "v3"
    taken.mkdir(parents=True)
    (taken / "keep.txt").write_text("someone else's")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused = [
        ("v3", tmp_path / "work", "was not made by this build"),  # an existing D/V
        ("repo", tmp_path, "overlaps the repository"),  # D/V is the repository
        ("versions", root.root, "overlaps the lifecycle root's versions"),  # D/V is versions/
        ("v3", root.version_dir("v1"), "overlaps the lifecycle root's versions"),  # inside a sealed version
        ("v3", root.versions_dir, "overlaps the lifecycle root's versions"),
        ("v3", a_file, "is not a directory"),
    ]
    before, repo_files = published_state(root), sorted(p.read_bytes() for p in repo.rglob("*") if p.is_file())
    for version, work_dir, cause in refused:
        done = indexctl(cli_env, "build", version, "--repo", str(repo), "--work-dir", str(work_dir))
        assert done.returncode == 2 and cause in done.stderr, (version, work_dir, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert published_state(root) == before
    assert (taken / "keep.txt").read_text() == "someone else's" and sorted(taken.iterdir()) == [taken / "keep.txt"]
    assert sorted(p.read_bytes() for p in repo.rglob("*") if p.is_file()) == repo_files
    assert not list(root.versions_dir.glob("*.staging"))
