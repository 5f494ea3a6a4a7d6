"""A sharded build fans out inside the version's run (with the multiprocess executor, a process per shard step) and
seals the same version an unsharded build does: same chunk ids, vectors, index rows and search results. A failed
build's step outputs, wherever `work_dir` puts them, go with its staging directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pytest

from kg_assets.definitions import defs
from kg_assets.lib import build, catalog, faiss_index
from kg_assets.lib.embedding import OpenAICompatible
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets_tests.helpers import SCIP_PYTHON, run_build
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def build_job() -> dg.JobDefinition:
    """The build job, reconstructable in each step's process."""
    return defs.resolve_job_def("build")


def run_multiprocess(
    root: LifecycleRoot, repo: Path, version: str, instance: dg.DagsterInstance, **settings: Any
) -> dg.ExecutionResult:
    """One build run with the multiprocess executor: every step (each shard's embed and encode) in its own
    process, two at a time."""
    instance.add_dynamic_partitions("index_versions", [version])
    run_config = {
        "resources": {
            "lifecycle": {"config": {"root": str(root.root)}},
            "settings": {"config": {"repo": str(repo), **settings}},
        },
        "execution": {"config": {"multiprocess": {"max_concurrent": 2}}},
    }
    with dg.execute_job(
        dg.reconstructable(build_job), instance, run_config=run_config, tags={"dagster/partition": version}
    ) as result:
        return result


def version_contents(root: LifecycleRoot, version: str) -> dict[str, Any]:
    vdir = root.version_dir(version)
    index = faiss_index.read_index(vdir / FAISS_FILE)
    with catalog.connect_read_only(vdir / CATALOG_FILE) as con:
        ids, vectors = con.execute("SELECT chunk_id, embedding FROM chunks ORDER BY chunk_id").fetchnumpy().values()
    vectors = np.stack(vectors).astype(np.float32)
    queries = vectors[:: max(1, len(vectors) // 50)]
    return {
        "ids": ids,
        "vectors": vectors,
        "rows": faiss_index.external_ids(index),
        "top10": faiss_index.search(index, queries, 10)[1],
        "factory": faiss_index.factory_string(index),
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The sample repository built with 1, 2 and 4 shards, each in its own root (so no vector is reused between
    them); IVF, so the shards encode into copies of one trained index. 4 shards run under the multiprocess
    executor (every shard step in a process of its own); 1 and 2 in-process as `indexctl build` runs, or also
    multiprocess where CI=true (about 80 s more per build on two loaded cores)."""
    base = tmp_path_factory.mktemp("sharded")
    repo = write_repo(base / "repo")
    multiprocess = {1, 2, 4} if os.environ.get("CI") == "true" else {4}
    built = {}
    with dg.instance_for_test() as instance:
        for shards in (1, 2, 4):
            root = LifecycleRoot(base / f"shards{shards}")
            settings = {"shards": shards, "factory": "IVF4,Flat"}
            if shards in multiprocess:
                result = run_multiprocess(root, repo, "v1", instance, **settings)
                starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
                for op in ("embeddings.embed_shard[", "faiss_index.encode_shard["):
                    assert len({e.pid for e in starts if e.step_key.startswith(op)}) == shards  # a process each
                logged = [e.user_message for e in instance.all_logs(result.run_id)]
                assert not any("beside embedding" in m for m in logged)  # scip_index indexed in its own process
            else:
                result = run_build(root, repo, "v1", instance, **settings)
            assert result.success
            assert root.build_lease("v1") is None  # sealing released the lease
            built[shards] = version_contents(root, "v1")
    return built


def test_sharded_builds_equal_the_unsharded_one(builds: dict[int, dict[str, Any]]) -> None:
    one = builds[1]
    assert len(one["ids"]) > 10 and one["factory"] == "IVF4,Flat"
    for shards in (2, 4):
        got = builds[shards]
        assert np.array_equal(got["ids"], one["ids"]) and np.array_equal(got["rows"], one["rows"])
        np.testing.assert_array_equal(got["vectors"], one["vectors"])
        assert np.array_equal(got["top10"], one["top10"]) and got["factory"] == one["factory"]


@pytest.mark.parametrize("work_dir", ["", "work"])
def test_a_failed_build_s_step_outputs_go_with_its_staging_directory(
    work_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default location is inside the staging directory; a custom one is recorded there and goes with it."""
    with socket.socket() as probe:  # a loopback port nobody listens on: every embedding request is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(OpenAICompatible, "backoff_s", 0.0)
    root, repo = LifecycleRoot(tmp_path / "indexes"), write_repo(tmp_path / "repo")
    settings = {"embedder": f"http://127.0.0.1:{port}#m#384", "shards": 2}
    if work_dir:
        settings["work_dir"] = str(tmp_path / work_dir)
    with dg.instance_for_test() as instance:
        result = run_build(root, repo, "v1", instance, assets=["chunks", "embeddings"], **settings)
    assert not result.success
    work = tmp_path / work_dir / "v1" if work_dir else root.staging_dir("v1") / build.BUILD_DIR
    assert (work / build.CHUNKS_FILE).is_file() and root.build_lease("v1") is None  # kept for a resume
    assert (work / "outputs").is_dir()  # the values passed between steps too (build_outputs), not in ./indexes
    assert root.gc(5, staging_max_age_s=0).removed_staging == ["v1.staging"]
    assert not work.exists() and not root.staging_dir("v1").exists()
