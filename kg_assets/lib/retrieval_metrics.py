"""Retrieval metrics on top-k id arrays (-1 = no hit): ANN fidelity against exact search, ranking quality against
labels, and the MRR comparison of two evals on the queries they share."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TIE_EPS = 1e-5  # a hit scoring within this of the k-th exact score counts for the tie-tolerant recall


def r4(value: float) -> float:
    return round(float(value), 4)


def ann_fidelity(
    ann_ids: np.ndarray, ann_exact: np.ndarray, flat_ids: np.ndarray, flat_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: ANN hits that are in the exact top-k, the same counting also a hit whose exact score reaches
    the k-th exact score (near-duplicate chunks make the exact id set ambiguous), and the exact top-k's size."""
    hits = np.zeros(len(ann_ids))
    tied = np.zeros(len(ann_ids))
    sizes = np.zeros(len(ann_ids))
    for row, (ann, exact, flat, flat_s) in enumerate(zip(ann_ids, ann_exact, flat_ids, flat_scores, strict=True)):
        truth = {int(i) for i in flat if i != -1}
        kth = flat_s[flat != -1].min() if truth else np.inf
        found = [(int(i), s) for i, s in zip(ann, exact, strict=True) if i != -1]
        sizes[row] = len(truth)
        hits[row] = sum(1 for i, _ in found if i in truth)
        tied[row] = min(len(truth), sum(1 for i, s in found if i in truth or s >= kth - TIE_EPS))
    return hits, tied, sizes


def recall_summary(hits: np.ndarray, tied: np.ndarray, sizes: np.ndarray) -> dict[str, Any]:
    """Micro recall (all hits over all exact neighbours), its tie-tolerant twin, and the per-query distribution
    (whose mean is the macro recall)."""
    per_query = hits / np.maximum(sizes, 1)
    q = np.percentile(per_query, [0, 10, 50, 90]) if len(per_query) else np.zeros(4)
    return {
        "recall_at_k": r4(hits.sum() / max(sizes.sum(), 1)),
        "tie_recall_at_k": r4(tied.sum() / max(sizes.sum(), 1)),
        "per_query": {"min": r4(q[0]), "p10": r4(q[1]), "p50": r4(q[2]), "p90": r4(q[3]), "mean": r4(per_query.mean())}
        if len(per_query)
        else {},
        "queries": len(per_query),
    }


def reciprocal_ranks(found: np.ndarray, positives: Sequence[frozenset[int]]) -> np.ndarray:
    """1 / rank of each query's first positive within its top k (0 when none is there)."""
    return np.array(
        [
            next((1.0 / r for r, i in enumerate(ids.tolist(), start=1) if i in pos), 0.0)
            for ids, pos in zip(found, positives, strict=True)
        ]
    )


def ranking_metrics(
    found: np.ndarray,
    positives: Sequence[frozenset[int]],
    targets: Sequence[Sequence[frozenset[int]]] | None = None,
) -> dict[str, float]:
    """recall@k, MRR@k and nDCG@k (binary relevance), averaged over the queries that have positives.

    `targets` groups each query's positives by what was labelled (a file or a line span: the chunks overlapping
    it); a target counts once, found by whichever of its chunks ranks first, so several chunks of one labelled
    file do not inflate the scores. Without `targets`, every positive chunk is a target of its own.
    """
    labelled = [row for row, pos in enumerate(positives) if pos]
    if not labelled:
        return {}
    recall, ndcg, rr = [], [], []
    for row in labelled:
        groups = targets[row] if targets is not None else [frozenset({p}) for p in positives[row]]
        ids = found[row].tolist()
        flags = target_hits(ids, groups)
        recall.append(sum(flags) / len(groups))
        dcg = sum(1.0 / math.log2(r + 1) for r, hit in enumerate(flags, start=1) if hit)
        ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(groups), len(ids)) + 1))
        ndcg.append(dcg / ideal)
        rr.append(next((1.0 / r for r, hit in enumerate(flags, start=1) if hit), 0.0))
    return {"recall_at_k": r4(np.mean(recall)), "mrr_at_k": r4(np.mean(rr)), "ndcg_at_k": r4(np.mean(ndcg))}


def target_hits(ids: Sequence[int], targets: Sequence[frozenset[int]]) -> list[bool]:
    """Per rank: whether the chunk belongs to a target that no earlier rank found."""
    open_targets = list(targets)
    flags = []
    for chunk_id in ids:
        match = next((t for t in open_targets if chunk_id in t), None)
        if match is not None:
            open_targets.remove(match)
        flags.append(match is not None)
    return flags


def compare_mrr(
    rr: Mapping[str, float], k: int, base_rr: Mapping[str, float], base_k: int, max_drop: float
) -> dict[str, Any]:
    """MRR of two evals over the labelled queries both ran (by query id), cut to the smaller k; `passed` when
    this one is at most `max_drop` below the base. No shared query is a failure: nothing would be compared."""
    shared = sorted(rr.keys() & base_rr.keys())
    check: dict[str, Any] = {"max_drop": max_drop, "shared_queries": len(shared)}
    if not shared:
        reason = "this run has no labelled queries" if not rr else "no labelled query in common"
        return {**check, "passed": False, "reason": f"MRR unverified: {reason} with the baseline's {len(base_rr)}"}
    cut = 1.0 / min(k, base_k)

    def mean_rr(values: Mapping[str, float]) -> float:
        return float(np.mean([v if v >= cut else 0.0 for v in (values[q] for q in shared)]))

    mrr, base = mean_rr(rr), mean_rr(base_rr)
    check.update(mrr_at_k=r4(mrr), baseline_mrr_at_k=r4(base), passed=base - mrr <= max_drop + 1e-9)
    if not check["passed"]:
        check["reason"] = (
            f"faiss MRR@{min(k, base_k)} {mrr:.4f} is {base - mrr:.4f} below the baseline's {base:.4f} on "
            f"{len(shared)} shared queries (allowed drop {max_drop})"
        )
    return check
