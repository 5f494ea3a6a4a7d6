"""XTR-style late interaction: rescore a candidate pool by MaxSim over token vectors of the configured embedder.

This is not the XTR model. It takes the embedder's own contextual token vectors (for the default MiniLM, its last
hidden states, L2-normalized per token), and scores a chunk for a query as the mean over query tokens of the best
cosine with any of the chunk's tokens (ColBERT's MaxSim, averaged so scores compare across queries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from kg_assets.lib.progress import Progress


class TokenEncoder(Protocol):
    def __call__(self, texts: Sequence[str], *, progress: Progress | None = None) -> list[np.ndarray]: ...


def maxsim(query_tokens: np.ndarray, doc_tokens: np.ndarray) -> float:
    """Mean over query tokens of the best inner product with a document token (0 for an empty side)."""
    if not len(query_tokens) or not len(doc_tokens):
        return 0.0
    return float((query_tokens @ doc_tokens.T).max(axis=1).mean())


class LateInteractionScorer:
    """Rescores candidate chunk ids per query; token vectors of each chunk are computed once and kept (float16)."""

    def __init__(
        self,
        encode: TokenEncoder,
        chunk_texts: Callable[[list[int]], dict[int, str]],
        progress: Progress | None = None,
    ) -> None:
        self._encode = encode
        self._chunk_texts = chunk_texts
        self._progress = progress
        self._tokens: dict[int, np.ndarray] = {}

    def rescore(
        self, queries: Sequence[str], candidates: Sequence[np.ndarray], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk ids) of each query's top k candidates by MaxSim; -1 ids pad short pools."""
        wanted = sorted({int(c) for pool in candidates for c in pool if c != -1} - self._tokens.keys())
        if wanted:
            texts = self._chunk_texts(wanted)
            encoded = self._encode([texts[c] for c in wanted], progress=self._progress)
            for chunk_id, vectors in zip(wanted, encoded, strict=True):
                self._tokens[chunk_id] = vectors.astype(np.float16)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, pool) in enumerate(zip(self._encode(list(queries)), candidates, strict=True)):
            pool = [int(c) for c in dict.fromkeys(pool.tolist()) if c != -1]
            ranked = sorted(((maxsim(query, self._tokens[c].astype(np.float32)), c) for c in pool), reverse=True)[:k]
            for rank, (score, chunk_id) in enumerate(ranked):
                scores[row, rank], found[row, rank] = score, chunk_id
        return scores, found
