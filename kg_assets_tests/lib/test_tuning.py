"""Tuning on real clustered data (tens of thousands of vectors) for IVF-Flat, IVF-PQ with its own re-rank stage
and without one (k_factor re-ranks from the stored vectors), HNSW, and IVF over an HNSW coarse quantizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kg_assets.lib import catalog, channels, faiss_index, tuning, tuning_run
from kg_assets.lib.errors import UsageError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.tuning_run import TuneSettings
from kg_assets_tests.conftest import stage_sample
from kg_assets_tests.sample_artifacts import write_sample

FACTORIES = {
    "ivf": "IVF64,Flat",
    "ivfpq": "IVF64,PQ16,RFlat",
    "pq": "IVF64,PQ16",
    "hnsw": "HNSW16",
    "ivfhnsw": "IVF64_HNSW16,Flat",
}


@pytest.fixture(scope="module")
def tuned_root(tmp_path_factory: pytest.TempPathFactory) -> LifecycleRoot:
    base = tmp_path_factory.mktemp("tuning")
    root = LifecycleRoot(base / "indexes")
    for version, factory in FACTORIES.items():
        sample = write_sample(base / version, n=20_000, dim=32, seed=7, factory=factory)
        root.stage(version, sample["faiss"], sample["duckdb"], sample["scip"], idmap_path=sample["idmap"])
    return root


def _independent_recall(root: LifecycleRoot, version: str, k: int, seed: int) -> float:
    """Re-measure a version as served: fresh load with its profile, new queries, exact truth over everything."""
    vdir = root.version_dir(version)
    index = faiss_index.read_index(vdir / "faiss.index")
    knobs = tuning.apply_profile(index, tuning.load_profile(vdir / "tuning.json"))
    ids, vectors = catalog.chunk_vectors(vdir / "catalog.duckdb")
    rows = np.random.default_rng(seed).choice(len(ids), 500, replace=False)
    _, truth = tuning.exact_topk(vectors[rows], vectors, ids, k)
    _, found = channels.search_with_profile(index, knobs, channels.Corpus(ids, vectors), vectors[rows], k)
    return tuning.recall_at_k(found, truth)


@pytest.mark.parametrize("version", list(FACTORIES))
@pytest.mark.parametrize("full", [False, True])
def test_chosen_point_meets_the_target_when_remeasured(tuned_root: LifecycleRoot, version: str, full: bool) -> None:
    samples = 400 if full else 200
    profile = tuning_run.tune_version(
        tuned_root, version, TuneSettings("full" if full else "quick", samples, generated_queries=False)
    )
    assert profile["met_target"], profile
    knobs = set(tuning.index_knobs(faiss_index.read_index(tuned_root.version_dir(version) / "faiss.index")))
    assert set(tuning.active_params(profile)) <= knobs  # knobs the index lacks are never set
    assert profile["frontier"] and profile["queries"]["self"] == samples
    assert _independent_recall(tuned_root, version, 10, seed=99) >= 0.94


def test_the_tuned_point_is_cheaper_than_the_largest(tuned_root: LifecycleRoot) -> None:
    profile = tuning_run.tune_version(tuned_root, "ivf", TuneSettings(target_recall=0.9, generated_queries=False))
    assert profile["nprobe"] < 64
    # IVF64,Flat over 20,000 x 32 floats: a query reads its nprobe lists of 128-byte codes.
    assert profile["bytes_per_query"] == int(profile["nprobe"] / 64 * 20_000 * 128)


def test_a_lossy_index_without_a_re_rank_stage_reaches_the_target_only_by_k_factor(tuned_root: LifecycleRoot) -> None:
    profile = tuning_run.tune_version(tuned_root, "pq", TuneSettings(generated_queries=False))
    assert profile["met_target"] and profile["k_factor"] > 1, profile
    # Every measured point without a re-rank stays below the target: PQ codes alone cannot rank the top 10.
    assert all(p["recall"] < 0.95 for p in profile["frontier"] if p["params"].get("k_factor", 1) == 1)
    assert profile["bytes_per_query"] > profile["k"] * profile["k_factor"] * 32 * 4  # the re-ranked rows counted


def test_quantizer_efsearch_is_swept_with_nprobe(tuned_root: LifecycleRoot) -> None:
    profile = tuning_run.tune_version(tuned_root, "ivfhnsw", TuneSettings("full", 200, generated_queries=False))
    assert set(tuning.index_knobs(faiss_index.read_index(tuned_root.version_dir("ivfhnsw") / "faiss.index"))) == {
        "nprobe",
        "quantizer_efSearch",
    }
    assert {"nprobe", "quantizer_efSearch"} <= set(profile) and profile["met_target"]
    assert len({p["params"]["quantizer_efSearch"] for p in profile["frontier"]}) >= 1
    assert profile["points_measured"] == len(tuning.EF_VALUES) * 7  # ef values x nprobe 1..64
    assert profile["param_str"].startswith("nprobe=") and "quantizer_efSearch=" in profile["param_str"]


def test_k_factor_re_ranks_from_the_stored_vectors_only_the_rows_touched(tuned_root: LifecycleRoot) -> None:
    vdir = tuned_root.version_dir("pq")
    index = faiss_index.read_index(vdir / "faiss.index")
    ids, vectors = catalog.chunk_vectors(vdir / "catalog.duckdb")
    queries = vectors[:100]
    _, truth = tuning.exact_topk(queries, vectors, ids, 10)
    knobs = {"nprobe": 64}
    tuning.set_knobs(index, knobs)
    _, plain = channels.search_with_profile(index, knobs, channels.Corpus(ids, vectors), queries, 10)
    touched: list[np.ndarray] = []

    class Recording(channels.Corpus):
        def exact_scores(self, q: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
            touched.append(chunk_ids)
            return super().exact_scores(q, chunk_ids)

    knobs = {"nprobe": 64, "k_factor": 16.0}
    tuning.set_knobs(index, knobs)
    _, reranked = channels.search_with_profile(index, knobs, Recording(ids, vectors), queries, 10)
    assert tuning.recall_at_k(reranked, truth) > max(0.95, tuning.recall_at_k(plain, truth))
    assert touched[0].shape == (100, 160)  # ceil(k x k_factor) candidates per query, nothing else


def test_ground_truth_is_the_whole_corpus(tuned_root: LifecycleRoot) -> None:
    ids, vectors = catalog.chunk_vectors(tuned_root.version_dir("ivf") / "catalog.duckdb")
    # Plant a near-duplicate of query 0 far outside the query sample (the first 200 rows).
    planted = vectors[0] + 0.01 * vectors[1]
    corpus = np.vstack([vectors, planted / np.linalg.norm(planted)]).astype(np.float32)
    corpus_ids = np.append(ids, 424242)
    sample = np.arange(200)
    _, truth = tuning.exact_topk(corpus[sample], corpus, corpus_ids, 2)
    assert list(truth[0]) == [ids[0], 424242]
    # A truth computed within the sample (the original tool's bug) cannot see it.
    _, within = tuning.exact_topk(corpus[sample], corpus[sample], corpus_ids[sample], 2)
    assert 424242 not in within[0]


def test_ground_truth_is_cached(tuned_root: LifecycleRoot, tmp_path: Path) -> None:
    ids, vectors = catalog.chunk_vectors(tuned_root.version_dir("ivf") / "catalog.duckdb")
    cache = tmp_path / "gt.npz"
    first = tuning.cached_exact_topk(cache, vectors[:50], vectors, ids, 5)
    assert list(tmp_path.iterdir()) == [cache]  # written through a unique temp sibling, renamed into place
    second = tuning.cached_exact_topk(cache, vectors[:50], vectors[:10], ids[:10], 5)  # served from the cache
    assert np.array_equal(first[1], second[1])


def test_overrides_persist_win_on_load_and_are_validated(tuned_root: LifecycleRoot) -> None:
    tuning_run.tune_version(tuned_root, "ivfpq", TuneSettings(generated_queries=False))
    tuning_run.set_overrides(tuned_root, "ivfpq", {"nprobe": 3, "k_factor": 1.5})
    for _ in range(2):  # survives repeated loads
        report = tuning_run.active_profile(tuned_root, "ivfpq")
        assert report["active"] == {"nprobe": 3, "k_factor": 1.5}
    with pytest.raises(UsageError, match="has no efSearch knob"):
        tuning_run.set_overrides(tuned_root, "ivfpq", {"efSearch": 32})
    with pytest.raises(UsageError, match="has no nprobe knob"):
        tuning_run.set_overrides(tuned_root, "hnsw", {"nprobe": 8})
    with pytest.raises(UsageError, match="HNSW16 already scores exactly"):
        tuning_run.set_overrides(tuned_root, "hnsw", {"k_factor": 2})
    with pytest.raises(UsageError, match="at least 1"):
        tuning_run.set_overrides(tuned_root, "ivfpq", {"k_factor": 0.5})
    audit = json.loads((tuned_root.version_dir("ivfpq") / "faiss.index.audit.json").read_text())
    assert audit["active"] == {"nprobe": 3, "k_factor": 1.5} and audit["history"]  # previous profile kept


def test_loading_applies_the_profile_and_never_writes(tmp_path: Path, samples: dict) -> None:
    root = LifecycleRoot(tmp_path / "indexes")
    stage_sample(root, "v1", samples["a"])  # IVF8 with a tuning.json of nprobe=4
    root.publish("v1")
    vdir = root.version_dir("v1")
    before = {p.name: p.read_bytes() for p in vdir.iterdir()}
    assert tuning_run.active_profile(root, "v1")["active"] == {"nprobe": 4}
    index = faiss_index.read_index(vdir / "faiss.index")
    assert tuning.apply_profile(index, tuning.load_profile(vdir / "tuning.json")) == {"nprobe": 4}
    assert {p.name: p.read_bytes() for p in vdir.iterdir()} == before
