"""Offline evaluation of a complete version (runbook section 5): the same queries through every retrieval channel,
one pool of hits, metrics against exact search and labels, and the publish gate.

Channels: `faiss` (the version's ANN index with its tuning profile, `nprobe` and a k_factor re-rank applied),
`flat` (exact inner product over the whole corpus: the oracle), `bm25` (lexical, code-aware tokens), `xtr`
(token-level MaxSim rescoring of the other channels' candidates; XTR-style, not the XTR model) and `hybrid`
(reciprocal-rank fusion of faiss, bm25 and xtr). Self-queries (stored vectors) measure ANN fidelity and run only
the vector channels; text query sets run every channel. Everything is in the `chunk_id` id space.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kg_assets.lib import catalog, faiss_index, query_sets, tuning
from kg_assets.lib.build import embedding_text
from kg_assets.lib.embedding import load_embedder
from kg_assets.lib.errors import NotFoundError, UsageError, ValidationError
from kg_assets.lib.fsutil import atomic_symlink, atomic_write_json, atomic_write_parquet, fsync_dir
from kg_assets.lib.late_interaction import LateInteractionScorer
from kg_assets.lib.lexical import LexicalIndex, code_tokens
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets.lib.progress import Progress
from kg_assets.lib.search import resolve_version, version_vectors

POOL_FILE = "pool.parquet"
METRICS_FILE = "metrics.json"
LATEST_LINK = "latest"
ANALYTICS_DB = "analytics.duckdb"
GATE_DIR = ".eval"  # under the lifecycle root: <root>/.eval/<version>.json, the newest eval of each version
DEFAULT_OUT_DIR = "artifacts/eval"
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al.)
WARMUP_QUERIES = 8
TIE_EPS = 1e-5  # a hit scoring within this of the k-th exact score counts for the tie-tolerant recall
CHANNELS = ("faiss", "flat", "bm25", "xtr", "hybrid")  # in the order reports list them
FUSED = ("faiss", "bm25", "xtr")

Log = Callable[[str], None]
ProgressFor = Callable[[str], Progress | None]  # a progress callback for a labelled stage


@dataclass(frozen=True)
class EvalSettings:
    """Parameters of one eval run (the CLI flags and the eval asset's config)."""

    k: int = 10
    k_factor: float = 2.0
    nprobe: int | None = None
    xtr: bool = False
    samples: int = 200
    seed: int = 0
    queries_file: Path | None = None
    generated_queries: bool = True
    max_generated: int = 200
    out_dir: Path = field(default_factory=lambda: resolve_out_dir(None))
    duckdb: Path | None = None
    recall_floor: float = 0.9
    max_mrr_drop: float = 0.02

    def check(self) -> None:
        if self.k < 1:
            raise UsageError("--k must be at least 1")
        if self.k_factor < 1:
            raise UsageError("--k-factor must be at least 1.0")
        if self.nprobe is not None and self.nprobe < 1:
            raise UsageError("--nprobe must be at least 1")
        if self.samples < 0:
            raise UsageError("--samples must be 0 or more")
        if not 0 <= self.recall_floor <= 1:
            raise UsageError("--recall-floor must be in [0, 1]")
        if self.max_mrr_drop < 0:
            raise UsageError("--max-mrr-drop must be 0 or more")


def resolve_out_dir(value: str | os.PathLike[str] | None) -> Path:
    """The eval output directory: `value`, else $KG_EVAL_DIR, else $EVAL_OUTPUT_DIR, else ./artifacts/eval."""
    chosen = value or os.environ.get("KG_EVAL_DIR") or os.environ.get("EVAL_OUTPUT_DIR") or DEFAULT_OUT_DIR
    return Path(chosen).expanduser().absolute()


@dataclass
class QuerySet:
    name: str
    qids: list[str]
    texts: list[str]
    vectors: np.ndarray
    positives: list[frozenset[int]] | None  # None: unlabelled
    text_channels: bool  # run bm25/xtr/hybrid (text queries) or only the vector channels (self-queries)


@dataclass
class Hits:
    """Top-k of one channel for one query set; ids are -1 where a channel found fewer than k."""

    scores: np.ndarray
    ids: np.ndarray
    seconds: float


class _Corpus:
    """The version's stored vectors, ordered by chunk id, with id -> row lookups."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids, self.vectors = ids, vectors

    def rows(self, chunk_ids: np.ndarray) -> np.ndarray:
        rows = np.searchsorted(self.ids, chunk_ids).clip(0, len(self.ids) - 1)
        return np.where(self.ids[rows] == chunk_ids, rows, -1)

    def exact_scores(self, queries: np.ndarray, chunk_ids: np.ndarray) -> np.ndarray:
        """Inner product of each query with each of its candidate chunks (-inf for -1 / unknown ids)."""
        rows = self.rows(chunk_ids)
        scores = np.einsum("nkd,nd->nk", self.vectors[rows.clip(0)], queries)
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32)


# ---- channels -----------------------------------------------------------------------------------------


def ann_search(index: Any, corpus: _Corpus, queries: np.ndarray, k: int, k_factor: float) -> tuple[np.ndarray, ...]:
    """The served ANN path: k * k_factor candidates from the index, re-ranked exactly from the stored vectors
    when k_factor > 1, top k kept. Returns (scores, chunk ids)."""
    fetch = min(max(k, math.ceil(k * k_factor)), index.ntotal)
    scores, ids = faiss_index.search(index, queries, fetch)
    if fetch > k:
        scores = corpus.exact_scores(queries, ids)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        ids = np.where(np.isfinite(scores), ids, -1)
        scores = np.where(np.isfinite(scores), scores, 0).astype(np.float32)
    return _pad(scores, ids, k)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if ids.shape[1] >= k:
        return scores[:, :k], ids[:, :k]
    extra = k - ids.shape[1]
    return np.pad(scores, ((0, 0), (0, extra))), np.pad(ids, ((0, 0), (0, extra)), constant_values=-1)


def fuse(channels: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal-rank fusion: each chunk scores sum(1 / (RRF_K + rank)) over the channels that found it."""
    n = channels[0].shape[0]
    scores = np.zeros((n, k), dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    for row in range(n):
        fused: dict[int, float] = {}
        for found in channels:
            for rank, chunk_id in enumerate(found[row].tolist(), start=1):
                if chunk_id != -1:
                    fused[chunk_id] = fused.get(chunk_id, 0.0) + 1.0 / (RRF_K + rank)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        for rank, (chunk_id, score) in enumerate(best):
            ids[row, rank], scores[row, rank] = chunk_id, score
    return scores, ids


# ---- metrics ------------------------------------------------------------------------------------------


def ann_fidelity(
    ann_ids: np.ndarray, ann_exact: np.ndarray, flat_ids: np.ndarray, flat_scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query recall@k of the ANN hits against exact top-k, and the tie-tolerant variant that also counts a
    hit whose exact score reaches the k-th exact score (near-duplicate chunks make the id set ambiguous)."""
    recall = np.empty(len(ann_ids))
    tie = np.empty(len(ann_ids))
    for row, (ann, exact, flat, flat_s) in enumerate(zip(ann_ids, ann_exact, flat_ids, flat_scores, strict=True)):
        truth = {int(i) for i in flat if i != -1}
        kth = flat_s[flat != -1].min() if truth else np.inf
        hits = [int(i) for i in ann if i != -1]
        recall[row] = len(truth & set(hits)) / max(len(truth), 1)
        tied = sum(1 for i, s in zip(ann, exact, strict=True) if i != -1 and (int(i) in truth or s >= kth - TIE_EPS))
        tie[row] = min(tied, len(truth)) / max(len(truth), 1)
    return recall, tie


def ranking_metrics(found: np.ndarray, positives: list[frozenset[int]]) -> dict[str, float]:
    """recall@k, MRR@k and nDCG@k (binary relevance), averaged over queries that have positives."""
    recall, rr, ndcg = [], [], []
    for ids, pos in zip(found, positives, strict=True):
        if not pos:
            continue
        flags = [int(i) in pos for i in ids]
        recall.append(sum(flags) / len(pos))
        rr.append(next((1.0 / r for r, hit in enumerate(flags, start=1) if hit), 0.0))
        dcg = sum(1.0 / math.log2(r + 1) for r, hit in enumerate(flags, start=1) if hit)
        ideal = sum(1.0 / math.log2(r + 1) for r in range(1, min(len(pos), len(ids)) + 1))
        ndcg.append(dcg / ideal)
    if not recall:
        return {}
    return {"recall_at_k": _r(np.mean(recall)), "mrr_at_k": _r(np.mean(rr)), "ndcg_at_k": _r(np.mean(ndcg))}


def distribution(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return {
        "min": _r(q[0]),
        "p10": _r(q[1]),
        "p50": _r(q[2]),
        "mean": _r(values.mean()),
        "p90": _r(q[3]),
        "max": _r(q[4]),
    }


def _r(value: float) -> float:
    return round(float(value), 4)


def symbol_hits(query_tokens: frozenset[str], symbols: list[str]) -> list[str]:
    """The chunk's symbols a query names: a symbol's name (last dotted part) as a whole token of the query, or
    all of its identifier parts among the query's tokens (`query_tokens` = `code_tokens` of the query)."""
    return [s for s in symbols if _names(s) and (_names(s)[0] in query_tokens or _names(s)[1] <= query_tokens)]


@functools.lru_cache(maxsize=1 << 16)
def _names(symbol: str) -> tuple[str, frozenset[str]] | None:
    """(whole lowercase name, identifier parts) of a symbol's last dotted part; None when it has no tokens."""
    name = symbol.rsplit(".", 1)[-1]
    parts = frozenset(code_tokens(name))
    return (name.lower().strip("_"), parts) if parts else None


def gate(
    ann_recall: float, mrr: float | None, baseline: dict[str, Any] | None, floor: float, max_drop: float
) -> dict[str, Any]:
    """The publish gate: ANN recall@k against flat at least `floor`, and faiss MRR@k at most `max_drop` below the
    current version's last eval (passes, marked skipped, when either side has no labelled queries)."""
    recall_check = {"floor": floor, "value": ann_recall, "passed": ann_recall >= floor}
    base_mrr = (baseline or {}).get("summary", {}).get("faiss_mrr_at_k")
    mrr_check: dict[str, Any] = {"max_drop": max_drop, "mrr_at_k": mrr, "baseline_mrr_at_k": base_mrr, "passed": True}
    if mrr is None or base_mrr is None:
        mrr_check["skipped"] = (
            "no labelled queries on one side" if baseline else "no earlier eval of the current version"
        )
    else:
        mrr_check["baseline"] = {"version": baseline["version"], "run_id": baseline["run_id"]}
        mrr_check["passed"] = base_mrr - mrr <= max_drop + 1e-9
    failures = []
    if not recall_check["passed"]:
        failures.append(f"ANN recall@k {ann_recall:.4f} is below the floor {floor}")
    if not mrr_check["passed"]:
        failures.append(
            f"faiss MRR@k {mrr:.4f} is {base_mrr - mrr:.4f} below {baseline['version']}'s {base_mrr:.4f} "
            f"(allowed drop {max_drop})"
        )
    return {"passed": not failures, "failures": failures, "ann_recall": recall_check, "mrr": mrr_check}


# ---- the run ------------------------------------------------------------------------------------------


def evaluate_version(
    root: LifecycleRoot,
    version: str | None,
    settings: EvalSettings,
    *,
    run_id: str,
    log: Log = lambda _: None,
    progress: ProgressFor = lambda _: None,
) -> dict[str, Any]:
    """Run the evaluation, write `pool.parquet` and `metrics.json` (and `latest`), refresh the coverage views and
    record the gate. Returns the record (paths, gate, headline summary) that `latest_eval` reads back."""
    settings.check()
    version = resolve_version(root, version)
    vdir = root.version_dir(version)
    catalog_path = vdir / CATALOG_FILE
    started = datetime.now(UTC)
    t_start = time.perf_counter()

    index = faiss_index.read_index(vdir / FAISS_FILE)
    profile = tuning.load_profile(vdir / tuning.TUNING_FILE) if (vdir / tuning.TUNING_FILE).exists() else None
    applied = tuning.apply_profile(index, profile)
    notes = []
    if settings.nprobe is not None:
        if "nprobe" in tuning.index_knobs(index):
            tuning.set_knobs(index, {"nprobe": settings.nprobe})
            applied["nprobe"] = settings.nprobe
        else:
            notes.append(f"--nprobe {settings.nprobe} ignored: {faiss_index.factory_string(index)} has no IVF lists")
    _check_catalog(catalog_path)
    corpus = _Corpus(*version_vectors(root, version))
    k = min(settings.k, len(corpus.ids))
    meta = catalog.read_meta(catalog_path)

    sets, embedder = _query_sets(catalog_path, corpus, meta, settings, progress)
    unavailable = {"splade": "no SPLADE model is configured; none installs with the project"}
    scorer = None
    if settings.xtr:
        if embedder is None or not hasattr(embedder, "token_vectors"):
            unavailable["xtr"] = "the version's embedder gives no token vectors"
        else:
            scorer = LateInteractionScorer(
                embedder.token_vectors, lambda ids: _texts(catalog_path, ids), progress("xtr token vectors")
            )
    lexical = None
    if any(s.text_channels for s in sets):
        t0 = time.perf_counter()
        lexical = LexicalIndex(*_all_texts(catalog_path))
        log(f"bm25 index over {len(corpus.ids)} chunks in {time.perf_counter() - t0:.1f}s")

    results: dict[str, dict[str, Hits]] = {}
    for qs in sets:
        results[qs.name] = _run_channels(qs, index, corpus, k, settings.k_factor, lexical, scorer)
        log(f"{qs.name}: {len(qs.qids)} queries through {', '.join(results[qs.name])}")

    metrics = _metrics(sets, results, corpus, k)
    current = root.current()
    baseline = latest_eval(root, current) if current else None
    gate_result = gate(
        metrics["ann"]["recall_at_k"],
        metrics["channels"].get("faiss", {}).get("mrr_at_k"),
        baseline,
        settings.recall_floor,
        settings.max_mrr_drop,
    )
    summary = _summary(metrics, k)
    metrics.update(
        version=version,
        run_id=run_id,
        started_at=started.isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - t_start, 3),
        params={
            "k": k,
            "k_factor": settings.k_factor,
            "nprobe": settings.nprobe,
            "profile": {"param_str": (profile or {}).get("param_str", ""), "applied": applied},
            "factory": faiss_index.factory_string(index),
            "ntotal": index.ntotal,
            "seed": settings.seed,
            "samples": settings.samples,
            "xtr_oracle": settings.xtr,
            "recall_floor": settings.recall_floor,
            "max_mrr_drop": settings.max_mrr_drop,
        },
        query_sets={qs.name: {"queries": len(qs.qids), "labelled": qs.positives is not None} for qs in sets},
        channels_run=sorted({ch for per_set in results.values() for ch in per_set}),
        channels_unavailable=unavailable,
        notes=notes,
        gate=gate_result,
        baseline={"version": baseline["version"], "run_id": baseline["run_id"]} if baseline else None,
        delta=_delta(summary, (baseline or {}).get("summary")),
    )

    run_dir = settings.out_dir / version / run_id
    pool = _pool_table(sets, results, catalog_path)
    record = _write_outputs(root, version, run_dir, pool, metrics, summary)
    db = settings.duckdb or settings.out_dir / ANALYTICS_DB
    owner = root.owning_version(db)
    if owner:
        raise UsageError(f"{db} belongs to complete version {owner}, which is immutable; pass another --duckdb")
    catalog_sha = root.read_manifest(version)["files"][CATALOG_FILE]["sha256"]
    catalog.install_pool_views(db, settings.out_dir / version / LATEST_LINK / POOL_FILE, catalog_path, catalog_sha)
    record["duckdb"] = str(db)
    atomic_write_json(gate_record_path(root, version), record)
    return {**record, "metrics": metrics}


def _query_sets(
    catalog_path: Path, corpus: _Corpus, meta: dict[str, str], settings: EvalSettings, progress: ProgressFor
) -> tuple[list[QuerySet], Any]:
    sets = []
    if settings.samples:
        rows = query_sets.self_sample(corpus.ids, settings.samples, settings.seed)
        chosen = corpus.ids[rows]
        texts = _texts(catalog_path, chosen.tolist())
        sets.append(
            QuerySet(
                "self",
                [f"self:{i}" for i in chosen],
                [texts[int(i)] for i in chosen],
                corpus.vectors[rows],
                None,
                False,
            )
        )
    labelled: dict[str, list[query_sets.TextQuery]] = {}
    if settings.queries_file is not None:
        labelled["file"] = query_sets.read_labelled_queries(settings.queries_file, catalog_path)
    if settings.generated_queries:
        generated = query_sets.docstring_queries(catalog_path, settings.max_generated, settings.seed)
        if generated:
            labelled["docstrings"] = generated
    embedder = None
    if labelled or settings.xtr:
        if "embedder_spec" not in meta:
            if labelled:
                raise ValidationError("this version records no embedder, so text queries cannot be embedded for it")
        else:
            embedder = load_embedder(meta["embedder_spec"])
    for name, queries in labelled.items():
        texts = [q.text for q in queries]
        positives = [q.positives for q in queries]
        vectors = embedder.embed(texts, progress=progress(f"embedding {name} queries"))
        sets.append(QuerySet(name, [q.qid for q in queries], texts, vectors, positives, True))
    if not sets:
        raise UsageError("no queries: use --samples > 0, --queries FILE, or generated docstring queries")
    return sets, embedder


def _run_channels(
    qs: QuerySet,
    index: Any,
    corpus: _Corpus,
    k: int,
    k_factor: float,
    lexical: LexicalIndex | None,
    scorer: LateInteractionScorer | None,
) -> dict[str, Hits]:
    def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Hits:
        t0 = time.perf_counter()
        scores, ids = fn()
        return Hits(scores, ids, time.perf_counter() - t0)

    ann_search(index, corpus, qs.vectors[:WARMUP_QUERIES], k, k_factor)  # untimed: first calls pay for start-up
    hits = {
        "faiss": timed(lambda: ann_search(index, corpus, qs.vectors, k, k_factor)),
        "flat": timed(lambda: tuning.exact_topk(qs.vectors, corpus.vectors, corpus.ids, k)),
    }
    if not qs.text_channels:
        return hits
    if lexical is not None:
        hits["bm25"] = timed(lambda: lexical.search(qs.texts, k))
    if scorer is not None:
        pools = [np.concatenate([h.ids[row] for h in hits.values()]) for row in range(len(qs.qids))]
        hits["xtr"] = timed(lambda: scorer.rescore(qs.texts, pools, k))
    fused = timed(lambda: fuse([hits[ch].ids for ch in FUSED if ch in hits], k))
    fused.seconds += sum(hits[ch].seconds for ch in FUSED if ch in hits)  # what a served hybrid costs
    hits["hybrid"] = fused
    return hits


def _metrics(sets: list[QuerySet], results: dict[str, dict[str, Hits]], corpus: _Corpus, k: int) -> dict[str, Any]:
    recalls, ties = [], []
    per_set: dict[str, Any] = {}
    found: dict[str, list[np.ndarray]] = {}
    labels: list[frozenset[int]] = []
    seconds: dict[str, float] = {}
    queries: dict[str, int] = {}
    for qs in sets:
        hits = results[qs.name]
        ann = hits["faiss"]
        recall, tie = ann_fidelity(
            ann.ids, corpus.exact_scores(qs.vectors, ann.ids), hits["flat"].ids, hits["flat"].scores
        )
        recalls.append(recall)
        ties.append(tie)
        entry: dict[str, Any] = {
            "queries": len(qs.qids),
            "ann_recall_at_k": _r(recall.mean()),
            "ann_tie_recall_at_k": _r(tie.mean()),
        }
        for channel, h in hits.items():
            seconds[channel] = seconds.get(channel, 0.0) + h.seconds
            queries[channel] = queries.get(channel, 0) + len(qs.qids)
        if qs.positives is not None:
            entry["channels"] = {ch: ranking_metrics(h.ids, qs.positives) for ch, h in hits.items()}
            labels += qs.positives
            for channel, h in hits.items():
                found.setdefault(channel, []).append(h.ids)
        per_set[qs.name] = entry
    recall_all, tie_all = np.concatenate(recalls), np.concatenate(ties)
    labelled_sets = sum(1 for qs in sets if qs.positives is not None)
    labelled_channels = {  # channels that answered every labelled set, over all labelled queries together
        ch: ranking_metrics(np.vstack(parts), labels) for ch, parts in found.items() if len(parts) == labelled_sets
    }
    return {
        "k": k,
        "ann": {
            "recall_at_k": _r(recall_all.mean()),
            "tie_recall_at_k": _r(tie_all.mean()),
            "per_query": distribution(recall_all),
            "queries": len(recall_all),
        },
        "channels": labelled_channels,
        "labelled_queries": sum(1 for p in labels if p),
        "latency_ms_per_query": {ch: _r(1000 * seconds[ch] / queries[ch]) for ch in CHANNELS if ch in seconds},
        "sets": per_set,
    }


def _summary(metrics: dict[str, Any], k: int) -> dict[str, Any]:
    """Headline figures kept in the gate record: what `diff`, the gate and deltas compare."""
    summary: dict[str, Any] = {
        "k": k,
        "ann_recall_at_k": metrics["ann"]["recall_at_k"],
        "ann_tie_recall_at_k": metrics["ann"]["tie_recall_at_k"],
        "queries": metrics["ann"]["queries"],
        "labelled_queries": metrics["labelled_queries"],
    }
    for channel, values in metrics["channels"].items():
        for name, value in values.items():
            summary[f"{channel}_{name}"] = value
    return summary


def _delta(summary: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, float] | None:
    if not baseline:
        return None
    keys = [key for key, value in summary.items() if isinstance(value, float) and isinstance(baseline.get(key), float)]
    return {key: _r(summary[key] - baseline[key]) for key in keys}


def _pool_table(sets: list[QuerySet], results: dict[str, dict[str, Hits]], catalog_path: Path) -> pa.Table:
    """One row per hit, hydrated from the catalog (uri, lines, the chunk's symbols the query names)."""
    hit_ids = np.unique(np.concatenate([h.ids.ravel() for per_set in results.values() for h in per_set.values()]))
    rows = catalog.hydrate(catalog_path, hit_ids[hit_ids != -1].tolist())
    cols: dict[str, list[Any]] = {name: [] for name in POOL_SCHEMA.names}
    for qs in sets:
        tokens = [frozenset(code_tokens(text)) for text in qs.texts]
        for channel, h in results[qs.name].items():
            queries, ranks = np.nonzero(h.ids != -1)
            chunk_ids = h.ids[queries, ranks].tolist()
            hits = [rows[i] for i in chunk_ids]
            cols["query_id"] += [qs.qids[q] for q in queries]
            cols["query_set"] += [qs.name] * len(hits)
            cols["channel"] += [channel] * len(hits)
            cols["rank"] += (ranks + 1).tolist()
            cols["chunk_id"] += chunk_ids
            cols["score"] += h.scores[queries, ranks].tolist()
            cols["uri"] += [r["uri"] for r in hits]
            cols["start_line"] += [r["start_line"] for r in hits]
            cols["end_line"] += [r["end_line"] for r in hits]
            cols["symbol_hits"] += [symbol_hits(tokens[q], r["symbols"]) for q, r in zip(queries, hits, strict=True)]
            if qs.positives is None:
                cols["is_positive"] += [None] * len(hits)
            else:
                cols["is_positive"] += [c in qs.positives[q] for q, c in zip(queries, chunk_ids, strict=True)]
    return pa.table(cols, schema=POOL_SCHEMA)


POOL_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query_set", pa.string()),
        ("channel", pa.string()),
        ("rank", pa.int32()),
        ("chunk_id", pa.int64()),
        ("score", pa.float32()),
        ("uri", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("symbol_hits", pa.list_(pa.string())),
        ("is_positive", pa.bool_()),
    ]
)


def _write_outputs(
    root: LifecycleRoot, version: str, run_dir: Path, pool: pa.Table, metrics: dict[str, Any], summary: dict[str, Any]
) -> dict[str, Any]:
    """pool.parquet and metrics.json (each atomic) in the run's directory, then `latest` flipped to it."""
    if run_dir.exists():
        raise ValidationError(f"{run_dir} already exists; eval run ids are unique")
    run_dir.mkdir(parents=True)
    fsync_dir(run_dir.parent)
    atomic_write_parquet(run_dir / POOL_FILE, pool)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    atomic_symlink(run_dir.parent / LATEST_LINK, run_dir.name)
    return {
        "version": version,
        "run_id": metrics["run_id"],
        "at": metrics["started_at"],
        "metrics_path": str(run_dir / METRICS_FILE),
        "pool_path": str(run_dir / POOL_FILE),
        "pool_rows": pool.num_rows,
        "gate": metrics["gate"],
        "summary": summary,
    }


def gate_record_path(root: LifecycleRoot, version: str) -> Path:
    path = root.root / GATE_DIR / f"{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def latest_eval(root: LifecycleRoot, version: str) -> dict[str, Any] | None:
    """The record of the version's newest eval (paths, gate, headline summary), or None if it has none."""
    path = root.root / GATE_DIR / f"{version}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path} is not valid JSON ({exc}); re-run indexctl eval --version {version}") from None


def gate_refusal(root: LifecycleRoot, version: str) -> str | None:
    """Why publishing `version` is refused by its last eval, or None when it passed or was never evaluated."""
    record = latest_eval(root, version)
    if record is None or record["gate"]["passed"]:
        return None
    return f"{version}'s last eval ({record['run_id']}) failed the gate: " + "; ".join(record["gate"]["failures"])


REQUIRED_COLUMNS = ("chunk_id", "uri", "language", "start_line", "end_line", "text", "symbols", "embedding")


def _check_catalog(catalog_path: Path) -> None:
    with catalog.connect_read_only(catalog_path) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        columns = {r[0] for r in con.execute("DESCRIBE chunks").fetchall()} if "chunks" in tables else set()
    missing = [c for c in REQUIRED_COLUMNS if c not in columns] + [t for t in ("modules",) if t not in tables]
    if missing:
        raise ValidationError(
            f"{catalog_path} lacks {', '.join(missing)}: eval needs a catalog written by indexctl build"
        )


def _texts(catalog_path: Path, chunk_ids: list[int]) -> dict[int, str]:
    """The text each chunk was embedded as (path header + text), by chunk id."""
    rows = catalog.hydrate(catalog_path, chunk_ids)
    missing = set(chunk_ids) - rows.keys()
    if missing:
        raise NotFoundError(f"chunk ids not in the catalog: {sorted(missing)[:5]}")
    return {i: embedding_text(r["uri"], r["text"]) for i, r in rows.items()}


def _all_texts(catalog_path: Path) -> tuple[np.ndarray, list[str]]:
    with catalog.connect_read_only(catalog_path) as con:
        table = con.sql("SELECT chunk_id, uri, text FROM chunks ORDER BY chunk_id").to_arrow_table()
    texts = [
        embedding_text(uri, text)
        for uri, text in zip(table.column("uri").to_pylist(), table.column("text").to_pylist(), strict=True)
    ]
    return table.column("chunk_id").to_numpy(), texts
