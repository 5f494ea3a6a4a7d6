"""Index choice, building, describing and id extraction on real FAISS indexes."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from kg_assets.lib import faiss_index
from kg_assets.lib.errors import UsageError
from kg_assets_tests.sample_artifacts import clustered_vectors


def test_factory_choice_follows_corpus_size() -> None:
    assert faiss_index.choose_factory(10_000, 384) == "Flat"
    assert faiss_index.choose_factory(100_000, 384) == "IVF1264,Flat"
    assert faiss_index.choose_factory(1_000_000, 384) == "IVF4000,PQ96x4fs,RFlat"


def test_fast_scan_scores_are_cosine_like_the_others() -> None:
    x = clustered_vectors(4000, 32, seed=5)
    ids = np.arange(4000)
    exact, _ = faiss_index.build_index(x, ids, "Flat")
    fast, _ = faiss_index.build_index(x, ids, "IVF16,PQ16x4fs,RFlat")
    s_exact, i_exact = faiss_index.search(exact, x[:10], 3)
    s_fast, i_fast = faiss_index.search(fast, x[:10], 3)
    same = i_exact == i_fast
    assert same.mean() > 0.8
    assert np.allclose(s_exact[same], s_fast[same], atol=1e-4)


def test_invalid_factory_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="could not parse"):
        faiss_index.check_factory("IVF,Nonsense", 16)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ16x4fs,RFlat", "HNSW8"])
def test_build_round_trips_ids_and_structure(tmp_path: Path, factory: str) -> None:
    x = clustered_vectors(3000, 32, seed=3)
    ids = np.random.default_rng(0).integers(-(2**62), 2**62, size=3000)
    index, stats = faiss_index.build_index(x, ids, factory)
    assert stats.ntotal == 3000 and (stats.train_size > 0) == (factory.startswith("IVF"))
    path = tmp_path / "faiss.index"
    faiss_index.write_index(index, path)
    del index
    # The loaded index is a temporary here: ids must survive the garbage collection of its wrapper.
    for _ in range(10):
        got = faiss_index.external_ids(faiss_index.read_index(path))
        gc.collect()
        _ = [np.zeros(1000) for _ in range(50)]
        assert np.array_equal(got, ids)
    summary = faiss_index.summarize(faiss_index.read_index(path))
    metric = "l2" if "x4fs" in factory else "inner_product"  # fast-scan PQ ranks unit vectors by L2
    assert (summary.dim, summary.ntotal, summary.metric) == (32, 3000, metric)
    assert summary.factory == factory.replace("RFlat", "Refine(Flat)")
    # With the build's default runtime knobs (nprobe, re-rank k_factor), self-queries find themselves.
    _, found = faiss_index.search(faiss_index.read_index(path), x[:100], 10)
    assert (found[:, 0] == ids[:100]).mean() >= (1.0 if factory == "Flat" else 0.9)
