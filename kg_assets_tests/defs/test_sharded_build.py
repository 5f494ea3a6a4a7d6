"""A sharded build fans out inside the version's run (with the multiprocess executor, a process per shard step) and
seals the same version an unsharded build does: same chunk ids, vectors, index rows and search results (top 10 of
200 real queries through the served search stack). A failed build's step outputs, wherever `work_dir` puts them, go
with its staging directory."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import dagster as dg
import faiss
import numpy as np
import pytest

from kg_assets.definitions import defs
from kg_assets.lib import build, catalog, faiss_index, retrieval, tuning
from kg_assets.lib.embedding import OpenAICompatible
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets_tests.helpers import REPO, SCIP_PYTHON, run_build
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")

QUERIES = 200  # issue 15: sharded == unsharded on the top 10 of 200 queries
QUESTIONS = REPO / "benchmarks" / "quality" / "questions.jsonl"


def build_job() -> dg.JobDefinition:
    """The build job, reconstructable in each step's process."""
    return defs.resolve_job_def("build")


# Each step process forked from a server that imported the definitions once, instead of a new interpreter
# importing them per step (the default `spawn`, which `KG_EXECUTOR=multiprocess indexctl build` uses and the CLI
# tests run): measured here, a 1-shard build took 20 s this way against 50-55 s with spawn, on two loaded cores.
FORKSERVER = {"forkserver": {"preload_modules": ["kg_assets.definitions"]}}


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
        "execution": {"config": {"multiprocess": {"max_concurrent": 2, "start_method": FORKSERVER}}},
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


def query_texts(root: LifecycleRoot, version: str) -> list[str]:
    """`QUERIES` real query texts: every name the version defines (identifier lookups, which the symbol and
    lexical channels answer too), then the project's labelled code-search questions in file order (written for
    other repositories: here they are varied questions, in words and in names, with well-defined rankings)."""
    with catalog.connect_read_only(root.version_dir(version) / CATALOG_FILE) as con:
        names = [r[0] for r in con.execute("SELECT DISTINCT unnest(symbols) AS s FROM chunks ORDER BY s").fetchall()]
    questions = [json.loads(line)["query"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    texts = [*names, *questions][:QUERIES]
    assert len(names) > 5 and len(set(texts)) == QUERIES
    return texts


def served_results(root: LifecycleRoot, version: str, texts: list[str]) -> dict[str, Any]:
    """What the served search stack (`retrieval.VersionHandle`, as `indexctl search` and `serve` open a version)
    answers for `texts`, each embedded with the version's own embedder: the hybrid top 10 as search prints it
    (id, path, lines, score), the dense top 10 at the served knobs, and the dense top 10 probing one IVF list, whose
    answer depends on the list the trained quantizer put each vector in and on the merged lists, not only on the
    stored vectors; with the list each query probes first."""
    with retrieval.VersionHandle.open(root, version) as handle:
        vectors = handle.embedder.embed(texts)
        hybrid = []
        for row, text in enumerate(texts):
            ranked = handle.rank(text, vectors[row : row + 1], 10)
            rows = handle.hydrate([hit.chunk_id for hit in ranked])
            hybrid.append([(i, rows[i]["uri"], rows[i]["start_line"], rows[i]["end_line"], s) for i, s, *_ in ranked])
        served = handle.dense(vectors, 10)
        tuning.set_knobs(handle.index, {"nprobe": 1})
        one_list = handle.dense(vectors, 10)
        probed = faiss.extract_index_ivf(handle.index).quantizer.search(vectors, 1)[1][:, 0]
    return {"queries": vectors, "hybrid": hybrid, "dense": served, "one_list": one_list, "probed": probed}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The sample repository built with 1, 2 and 4 shards, each in its own root (so no vector is reused between
    them) and under the multiprocess executor (every step, each shard's embed and encode, in a process of its
    own); IVF, so the shards encode into copies of one trained index. Then each version searched by the served
    stack with the same `QUERIES` texts."""
    base = tmp_path_factory.mktemp("sharded")
    repo = write_repo(base / "repo")
    built, roots = {}, {}
    with dg.instance_for_test() as instance:
        for shards in (1, 2, 4):
            root = roots[shards] = LifecycleRoot(base / f"shards{shards}")
            result = run_multiprocess(root, repo, "v1", instance, shards=shards, factory="IVF4,Flat")
            assert result.success
            starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
            assert len({e.pid for e in starts}) == len(starts)  # a process each
            assert len([e for e in starts if e.step_key.startswith("faiss_index.encode_shard[")]) == shards
            logged = [e.user_message for e in instance.all_logs(result.run_id)]
            assert not any("beside embedding" in m for m in logged)  # scip_index indexed in its own process
            assert root.build_lease("v1") is None  # sealing released the lease
            built[shards] = version_contents(root, "v1")
    texts = query_texts(roots[1], "v1")
    for shards, root in roots.items():
        built[shards]["served"] = served_results(root, "v1", texts)
    return built


def test_sharded_builds_equal_the_unsharded_one(builds: dict[int, dict[str, Any]]) -> None:
    one = builds[1]
    assert len(one["ids"]) > 10 and one["factory"] == "IVF4,Flat"
    for shards in (2, 4):
        got = builds[shards]
        assert np.array_equal(got["ids"], one["ids"]) and np.array_equal(got["rows"], one["rows"])
        np.testing.assert_array_equal(got["vectors"], one["vectors"])
        assert np.array_equal(got["top10"], one["top10"]) and got["factory"] == one["factory"]
    served = one["served"]
    assert len(served["hybrid"]) == QUERIES and all(len(hits) == 10 for hits in served["hybrid"])
    assert set(served["probed"]) == set(range(4))  # the queries probe every list first ...
    assert not np.array_equal(served["one_list"][1], served["dense"][1])  # ... and one list is not all of them
    for shards in (2, 4):
        got = builds[shards]["served"]
        np.testing.assert_array_equal(got["queries"], served["queries"])  # the version's embedder, the same
        assert got["hybrid"] == served["hybrid"]
        for knobs in ("dense", "one_list"):
            np.testing.assert_array_equal(got[knobs][1], served[knobs][1])  # ids
            np.testing.assert_array_equal(got[knobs][0], served[knobs][0])  # scores


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
