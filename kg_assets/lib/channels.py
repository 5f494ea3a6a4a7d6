"""Vector retrieval channels of the offline eval and of search: each answers a batch of queries with top-k
(scores, chunk ids), -1 ids where it found fewer than k. The lexical and late-interaction channels live in
`lexical` and `late_interaction`."""

from __future__ import annotations

import math
from typing import Protocol

import faiss
import numpy as np

from kg_assets.lib import faiss_index


class Corpus:
    """A version's stored vectors, ordered by chunk id, with id -> row lookups."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids, self.vectors = ids, vectors

    def rows(self, chunk_ids: np.ndarray) -> np.ndarray:
        """Row of each chunk id in the corpus, -1 for -1 or unknown ids."""
        rows = np.searchsorted(self.ids, chunk_ids).clip(0, len(self.ids) - 1)
        return np.where(self.ids[rows] == chunk_ids, rows, -1)

    def exact_scores(self, queries: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
        """Inner product of each query with each of its candidate chunks (-inf for -1 / unknown ids)."""
        rows = self.rows(chunk_ids)
        scores = np.einsum("nkd,nd->nk", self.vectors[rows.clip(0)], queries)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32)


class StoredVectors(Protocol):
    """Where an exact re-rank reads candidates' stored vectors: the corpus in memory, or a served version's catalog."""

    def exact_scores(self, queries: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray: ...


def ann_search(
    index: faiss.Index, corpus: StoredVectors, queries: np.ndarray, k: int, rerank_factor: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The `faiss` channel: the index as loaded (its knobs set by the caller); with `rerank_factor` > 1,
    k * rerank_factor candidates re-ranked exactly from the stored vectors, top k kept."""
    fetch = min(max(k, math.ceil(k * rerank_factor)), index.ntotal)
    scores, ids = faiss_index.search(index, queries, fetch)
    if fetch > k:
        exact = corpus.exact_scores(queries, ids)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)
        found = np.isfinite(scores)
        scores, ids = np.where(found, scores, 0).astype(np.float32), np.where(found, ids, -1)
    return pad(scores, ids, k)


def search_with_profile(
    index: faiss.Index, knobs: dict[str, float], corpus: Corpus, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k as a version serves it: `index` with `knobs` already set (what `tuning.apply_profile` or
    `tuning.set_knobs` returned) and, on an index without its own re-rank stage, the knobs' `k_factor` as an
    exact re-rank of ceil(k * k_factor) candidates from `corpus` (only those rows are read)."""
    return ann_search(index, corpus, queries, k, faiss_index.rerank_factor(index, knobs.get("k_factor")))


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Widen (n, m) results to (n, k) with 0 scores and -1 ids."""
    if ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    extra = ((0, 0), (0, k - ids.shape[1]))
    return np.pad(scores, extra), np.pad(ids, extra, constant_values=-1)
