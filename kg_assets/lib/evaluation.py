"""Offline evaluation of a complete version (runbook section 5): the same queries through every retrieval channel,
one pool of hits, metrics against exact search and labels, and the publish gate.

Channels: `faiss` (the version's ANN index with its tuning profile and the run's overrides), `flat` (exact inner
product over the whole corpus: the oracle), `bm25` (the version's lexical index), `xtr` (token-level MaxSim
rescoring of the faiss and bm25 candidates; XTR-style, not the XTR model) and `hybrid` (the retrieval stack that
`indexctl search` serves, over this run's index). Self-queries (stored vectors) measure ANN fidelity and run only
the vector channels; text query sets run every channel. Everything is in the `chunk_id` id space. Generated
docstring queries are text of the chunks they label, so the headline quality figures leave them out whenever a
labelled file is given; the MRR regression gate (faiss, version against version) still uses them.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kg_assets.lib import catalog, eval_gate, eval_outputs, faiss_index, query_sets, tuning
from kg_assets.lib.channels import Corpus, ann_search
from kg_assets.lib.embedding import Embedder, embedding_text, version_embedder
from kg_assets.lib.errors import ConflictError, NotFoundError, UsageError, ValidationError
from kg_assets.lib.late_interaction import LateInteractionScorer
from kg_assets.lib.lexical import LEXICAL_FILE
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets.lib.progress import Progress
from kg_assets.lib.query_sets import GENERATED_HELP, QUERIES_HELP
from kg_assets.lib.retrieval import VersionHandle
from kg_assets.lib.retrieval_metrics import (
    ann_fidelity,
    r4,
    ranking_metrics,
    recall_summary,
    reciprocal_ranks,
)
from kg_assets.lib.search import version_vectors
from kg_assets.lib.settings import check_bounds, setting

ANALYTICS_DB = "analytics.duckdb"
DEFAULT_OUT_DIR = "artifacts/eval"
WARMUP_QUERIES = 8
CHANNELS = ("faiss", "flat", "bm25", "xtr", "hybrid")  # in the order reports list them
REQUIRED_COLUMNS = ("chunk_id", "uri", "language", "start_line", "end_line", "text", "symbols", "embedding")

Log = Callable[[str], None]
ProgressFor = Callable[[str], Progress | None]  # a progress callback for a labelled stage


def resolve_out_dir(value: str | os.PathLike[str] | None) -> Path:
    """The eval output directory: `value`, else $KG_EVAL_DIR, else $EVAL_OUTPUT_DIR, else ./artifacts/eval."""
    chosen = value or os.environ.get("KG_EVAL_DIR") or os.environ.get("EVAL_OUTPUT_DIR") or DEFAULT_OUT_DIR
    return Path(chosen).expanduser().absolute()


@dataclass(frozen=True)
class EvalSettings:
    """Parameters of one eval run: the single definition of `indexctl eval`'s options and the eval asset's config
    (both derived from these fields)."""

    k: int = setting(10, "Hits per channel.", minimum=1, flags=("-k", "--k"))
    k_factor: float | None = setting(None, f"{tuning.KNOBS['k_factor'].help} Default: the profile's.", minimum=1)
    nprobe: int | None = setting(None, f"{tuning.KNOBS['nprobe'].help} Default: the profile's.", minimum=1)
    xtr_oracle: bool = setting(False, "Add the MaxSim (XTR-style) channel.")
    samples: int = setting(200, "Self-queries sampled from the stored vectors.", minimum=0)
    seed: int = setting(0, "Seed of the self-query sample and of the generated queries kept.")
    queries_file: Path | None = setting(None, QUERIES_HELP, flags=("--queries",))
    generated_queries: bool = setting(True, GENERATED_HELP)
    max_generated: int = setting(200, "At most this many generated queries.", minimum=0)
    out_dir: Path | None = setting(None, "Output directory (default $KG_EVAL_DIR, $EVAL_OUTPUT_DIR, artifacts/eval).")
    duckdb: Path | None = setting(None, "DuckDB for the pool views (default: <out-dir>/analytics.duckdb).")
    recall_floor: float = setting(0.9, "Gate: ANN recall@k against flat at least this.", minimum=0, maximum=1)
    max_mrr_drop: float = setting(0.02, "Gate: faiss MRR@k at most this below the current version's.", minimum=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", resolve_out_dir(self.out_dir))  # None: from the environment, once

    @property
    def analytics_db(self) -> Path:
        return Path(self.duckdb).absolute() if self.duckdb else self.out_dir / ANALYTICS_DB


@dataclass
class QuerySet:
    name: str
    qids: list[str]
    texts: list[str]
    vectors: np.ndarray
    positives: list[frozenset[int]] | None  # None: unlabelled
    text_channels: bool  # run bm25/xtr/hybrid (text queries) or only the vector channels (self-queries)
    targets: list[tuple[frozenset[int], ...]] | None = None  # positives grouped by labelled file or span
    categories: list[str] | None = None  # a labelled query's category ("" when the file gives none)
    leaky: bool = False  # the queries are text of their targets (docstring sentences): kept out of quality figures


@dataclass
class Hits:
    """Top-k of one channel for one query set; ids are -1 where a channel found fewer than k."""

    scores: np.ndarray
    ids: np.ndarray
    seconds: float


@dataclass(frozen=True)
class Knobs:
    """What the faiss channel ran with, against what the version serves with (search applies only the profile)."""

    served: dict[str, float]
    active: dict[str, float]
    rerank_factor: float  # > 1: an exact re-rank from stored vectors outside the index (it has no IndexRefine)
    notes: tuple[str, ...]

    @property
    def differences(self) -> dict[str, float]:
        """Settings of this run that serving does not use: the gate then measured a what-if."""
        return {name: value for name, value in self.active.items() if self.served.get(name) != value}


def set_knobs(index: faiss.Index, profile: dict[str, Any] | None, settings: EvalSettings) -> Knobs:
    """Apply the version's profile, then the run's `nprobe` and `k_factor`. On an index with an exact re-rank
    stage (IndexRefine) `k_factor` is that stage's knob, as in `tune --k-factor`; on a lossy index without one it
    re-ranks k * k_factor candidates from the stored vectors (as search does with a profile's k_factor); an index
    that scores exactly needs neither."""
    applied = tuning.apply_profile(index, profile)
    served = tuning.active_knobs(index, applied)
    have = tuning.index_knobs(index)
    notes = []
    if settings.nprobe is not None:
        if "nprobe" in have:
            nlist = next(n.nlist for n in tuning.index_nodes(index) if isinstance(n, faiss.IndexIVF))
            if settings.nprobe > nlist:  # the runbook's --nprobe 64 on a small index: probe every list
                notes.append(f"--nprobe {settings.nprobe} is more than the {nlist} IVF lists: all {nlist} are probed")
            applied["nprobe"] = min(settings.nprobe, nlist)
        else:
            notes.append(f"--nprobe {settings.nprobe} ignored: {faiss_index.factory_string(index)} has no IVF lists")
    if settings.k_factor is not None:
        if "k_factor" in have:
            applied["k_factor"] = settings.k_factor
        elif settings.k_factor > 1:
            notes.append(f"--k-factor ignored: {faiss_index.factory_string(index)} already scores exactly")
    tuning.set_knobs(index, applied)
    rerank = faiss_index.rerank_factor(index, applied.get("k_factor"))
    return Knobs(served, tuning.active_knobs(index, applied), rerank, tuple(notes))


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
    """Run the evaluation; write `pool.parquet`, `metrics.json`, the gate record and `latest`, then refresh the
    coverage views. Returns the gate record (paths, gate, headline summary) with the metrics under "metrics"."""
    check_bounds(settings)
    version = root.resolve_version(version)
    vdir = root.version_dir(version)
    catalog_path = vdir / CATALOG_FILE
    db = settings.analytics_db
    root.check_output_path(db, "--duckdb")
    root.check_output_path(settings.out_dir / version, "--out-dir")
    catalog_sha = root.catalog_sha256(version)
    _check_catalog(catalog_path)
    started = datetime.now(UTC)
    t_start = time.perf_counter()

    index = faiss_index.read_index(vdir / FAISS_FILE)
    profile = tuning.load_profile_if_any(vdir)
    knobs = set_knobs(index, profile, settings)
    corpus = Corpus(*version_vectors(root, version))
    k = min(settings.k, len(corpus.ids))
    notes = [*knobs.notes, *([f"k {settings.k} cut to the corpus size {k}"] if k < settings.k else [])]
    embedder = version_embedder(catalog.read_meta(catalog_path), version)
    sets = _query_sets(catalog_path, corpus, embedder, settings, progress)

    unavailable = {"splade": "no SPLADE model is configured; none installs with the project"}
    if settings.generated_queries and not any(qs.name == "docstrings" for qs in sets):
        notes.append(
            "no docstring queries: the version's SCIP data documents no definition (see `indexctl health`: "
            "its artifacts check counts the SCIP documents)"
        )
    scorer = None
    if settings.xtr_oracle:
        if embedder is None or not hasattr(embedder, "token_vectors"):
            unavailable["xtr"] = "the version's embedder gives no token vectors"
        elif not any(qs.text_channels for qs in sets):
            unavailable["xtr"] = "no text queries to rescore (--queries FILE, or docstring queries from SCIP data)"
        else:
            texts_of = functools.partial(_texts, catalog_path)
            scorer = LateInteractionScorer(embedder.token_vectors, texts_of, progress("xtr token vectors"))
    stack = None
    if any(s.text_channels for s in sets):  # the served stack over this run's index: bm25 and hybrid
        stack = VersionHandle.open(root, version, index=index)
        stack.rerank_factor = knobs.rerank_factor
        notes += stack.notes
        if stack.lexical is None:
            unavailable["bm25"] = f"version {version} has no usable {LEXICAL_FILE} (see the notes)"

    try:
        results: dict[str, dict[str, Hits]] = {}
        for qs in sets:
            results[qs.name] = _run_channels(qs, index, corpus, k, knobs.rerank_factor, stack, scorer)
            log(f"{qs.name}: {len(qs.qids)} queries through {', '.join(results[qs.name])}")
    finally:
        if stack is not None:
            stack.close()

    metrics = _metrics(sets, results, corpus, k)
    if metrics["quality_sets"] and all(metrics["sets"][name]["leaky"] for name in metrics["quality_sets"]):
        notes.append(
            "the labelled figures come from docstring sentences, text of the chunks they label (bm25 and hybrid "
            "find them by string matching); pass --queries FILE for questions that do not leak"
        )
    current = root.current()
    baseline = eval_gate.latest_eval(root, current) if current else None
    base_metrics = eval_gate.read_metrics(baseline) if baseline else None
    gate = eval_gate.gate(metrics, baseline, base_metrics, settings.recall_floor, settings.max_mrr_drop)
    gate["measured_overrides"] = knobs.differences
    summary = eval_gate.summary(metrics)
    run_dir = settings.out_dir / version / run_id
    metrics.update(
        version=version,
        run_id=run_id,
        started_at=started.isoformat(timespec="seconds"),
        seconds=r4(time.perf_counter() - t_start),
        params={
            "k": k,
            "k_factor": settings.k_factor,
            "nprobe": settings.nprobe,
            "profile": {"param_str": (profile or {}).get("param_str", ""), "served": knobs.served},
            "active": knobs.active,
            "rerank_k_factor": knobs.rerank_factor,
            "factory": faiss_index.factory_string(index),
            "ntotal": index.ntotal,
            "seed": settings.seed,
            "samples": settings.samples,
            "xtr_oracle": settings.xtr_oracle,
            "recall_floor": settings.recall_floor,
            "max_mrr_drop": settings.max_mrr_drop,
        },
        query_sets={qs.name: {"queries": len(qs.qids), "labelled": qs.positives is not None} for qs in sets},
        channels_run=[ch for ch in CHANNELS if any(ch in per_set for per_set in results.values())],
        channels_unavailable=unavailable,
        notes=notes,
        gate=gate,
        baseline={"version": baseline["version"], "run_id": baseline["run_id"]} if baseline else None,
        delta=eval_gate.delta(summary, (baseline or {}).get("summary")),
        outputs={
            "pool": str(run_dir / eval_outputs.POOL_FILE),
            "metrics": str(run_dir / eval_outputs.METRICS_FILE),
            "duckdb": str(db),
        },
    )
    pool = eval_outputs.pool_table(sets, results, catalog_path)
    metrics["outputs"]["pool_rows"] = pool.num_rows
    record = eval_outputs.write_outputs(root, version, run_dir, pool, metrics, summary, catalog_sha)
    try:
        catalog.install_pool_views(
            db,
            settings.out_dir / version / eval_outputs.LATEST_LINK / eval_outputs.POOL_FILE,
            catalog_path,
            catalog_sha,
        )
    except ConflictError as exc:
        raise ConflictError(
            f"pool and metrics are written ({run_dir}), but the views were not refreshed: {exc}; "
            "re-run when it is free or pass another --duckdb"
        ) from None
    return {**record, "metrics": metrics}


def _query_sets(
    catalog_path: Path, corpus: Corpus, embedder: Embedder | None, settings: EvalSettings, progress: ProgressFor
) -> list[QuerySet]:
    sets = []
    if settings.samples:
        rows = query_sets.self_sample(corpus.ids, settings.samples, settings.seed)
        chosen = corpus.ids[rows].tolist()
        texts = _texts(catalog_path, chosen)
        qids = [f"self:{i}" for i in chosen]
        sets.append(QuerySet("self", qids, [texts[i] for i in chosen], corpus.vectors[rows], None, False))
    labelled: dict[str, list[query_sets.TextQuery]] = {}
    if settings.queries_file is not None:
        labelled["file"] = query_sets.read_labelled_queries(settings.queries_file, catalog_path)
    if settings.generated_queries:
        generated = query_sets.docstring_queries(catalog_path, settings.max_generated, settings.seed)
        if generated:
            labelled["docstrings"] = generated
    if labelled and embedder is None:
        raise ValidationError("this version records no embedder, so text queries cannot be embedded for it")
    for name, queries in labelled.items():
        texts = [q.text for q in queries]
        vectors = embedder.embed(texts, progress=progress(f"embedding {name} queries"))
        positives = [q.positives for q in queries]
        targets = [q.targets or tuple(frozenset({p}) for p in q.positives) for q in queries]
        categories = [q.category for q in queries]
        leaky = name == "docstrings"  # a docstring's sentence is text of the chunk it labels
        sets.append(
            QuerySet(name, [q.qid for q in queries], texts, vectors, positives, True, targets, categories, leaky)
        )
    if not sets:
        raise UsageError("no queries: use --samples > 0, --queries FILE, or generated docstring queries")
    return sets


def _run_channels(
    qs: QuerySet,
    index: faiss.Index,
    corpus: Corpus,
    k: int,
    rerank_factor: float,
    stack: VersionHandle | None,
    scorer: LateInteractionScorer | None,
) -> dict[str, Hits]:
    def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Hits:
        t0 = time.perf_counter()
        scores, ids = fn()
        return Hits(scores, ids, time.perf_counter() - t0)

    ann_search(index, corpus, qs.vectors[:WARMUP_QUERIES], k, rerank_factor)  # untimed: first calls pay start-up
    hits = {
        "faiss": timed(lambda: ann_search(index, corpus, qs.vectors, k, rerank_factor)),
        "flat": timed(lambda: tuning.exact_topk(qs.vectors, corpus.vectors, corpus.ids, k)),
    }
    if not qs.text_channels or stack is None:
        return hits
    if stack.lexical is not None:
        hits["bm25"] = timed(lambda: stack.lexical.search(qs.texts, k))
    if scorer is not None:  # the servable candidates only: the flat oracle's hits are not in the pool
        pools = [
            np.concatenate([hits[ch].ids[row] for ch in ("faiss", "bm25") if ch in hits]) for row in range(len(qs.qids))
        ]
        hits["xtr"] = timed(lambda: scorer.rescore(qs.texts, pools, k))
    hits["hybrid"] = timed(lambda: _served(stack, qs, k))
    return hits


def _served(stack: VersionHandle, qs: QuerySet, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `hybrid` channel: each query through the retrieval stack `indexctl search` serves, as (scores, ids)."""
    scores = np.zeros((len(qs.qids), k), dtype=np.float32)
    ids = np.full((len(qs.qids), k), -1, dtype=np.int64)
    for row, (text, vector) in enumerate(zip(qs.texts, qs.vectors, strict=True)):
        for rank, hit in enumerate(stack.rank(text, vector[None, :], k)):
            scores[row, rank], ids[row, rank] = hit.score, hit.chunk_id
    return scores, ids


def _metrics(sets: list[QuerySet], results: dict[str, dict[str, Hits]], corpus: Corpus, k: int) -> dict[str, Any]:
    fidelity = []
    per_set: dict[str, Any] = {}
    found: dict[str, list[np.ndarray]] = {}
    positives: list[frozenset[int]] = []
    targets: list[tuple[frozenset[int], ...]] = []
    faiss_rr: dict[str, float] = {}
    seconds: dict[str, float] = {}
    answered: dict[str, int] = {}
    labelled_sets = [qs.name for qs in sets if qs.positives is not None]
    quality_sets = [qs.name for qs in sets if qs.positives is not None and not qs.leaky] or labelled_sets
    for qs in sets:
        hits = results[qs.name]
        ann, flat = hits["faiss"], hits["flat"]
        counts = ann_fidelity(ann.ids, corpus.exact_scores(qs.vectors, ann.ids), flat.ids, flat.scores)
        fidelity.append(counts)
        ann_set = recall_summary(*counts)
        entry: dict[str, Any] = {
            "queries": len(qs.qids),
            "ann_recall_at_k": ann_set["recall_at_k"],
            "ann_tie_recall_at_k": ann_set["tie_recall_at_k"],
        }
        for channel, h in hits.items():
            seconds[channel] = seconds.get(channel, 0.0) + h.seconds
            answered[channel] = answered.get(channel, 0) + len(qs.qids)
        if qs.positives is not None:
            entry["leaky"] = qs.leaky
            entry["channels"] = {ch: ranking_metrics(h.ids, qs.positives, qs.targets) for ch, h in hits.items()}
            entry["categories"] = _by_category(qs, hits)
            if qs.name in quality_sets:
                for channel, h in hits.items():
                    found.setdefault(channel, []).append(h.ids)
                positives += qs.positives
                targets += qs.targets
            rr = reciprocal_ranks(ann.ids, qs.positives)
            faiss_rr.update({f"{qs.name}|{q}": r4(v) for q, v, p in zip(qs.qids, rr, qs.positives, strict=True) if p})
        per_set[qs.name] = entry
    labelled_channels = {  # channels that answered every quality set, over all their queries together
        ch: ranking_metrics(np.vstack(parts), positives, targets)
        for ch, parts in found.items()
        if len(parts) == len(quality_sets)
    }
    return {
        "k": k,
        "ann": recall_summary(*(np.concatenate(part) for part in zip(*fidelity, strict=True))),
        "channels": {ch: labelled_channels[ch] for ch in CHANNELS if labelled_channels.get(ch)},
        "quality_sets": quality_sets,
        "labelled_queries": len(faiss_rr),
        "faiss_rr": faiss_rr,
        "latency_ms_per_query": {ch: r4(1000 * seconds[ch] / answered[ch]) for ch in CHANNELS if ch in seconds},
        "sets": per_set,
    }


def _by_category(qs: QuerySet, hits: dict[str, Hits]) -> dict[str, dict[str, dict[str, float]]]:
    """Per category of the set's queries (when the file gives categories): each channel's ranking metrics."""
    names = sorted({c for c in qs.categories or () if c})
    out = {}
    for name in names:
        rows = [i for i, c in enumerate(qs.categories) if c == name]
        out[name] = {
            ch: ranking_metrics(h.ids[rows], [qs.positives[i] for i in rows], [qs.targets[i] for i in rows])
            for ch, h in hits.items()
        }
    return out


def channel_rows(metrics: dict[str, Any]) -> list[tuple[str, float | None, float | None, float | None, float]]:
    """(channel, recall@k, MRR@k, nDCG@k, ms/query) per channel run, in report order; None where unlabelled."""
    rows = []
    for channel, latency in sorted(metrics["latency_ms_per_query"].items(), key=lambda item: CHANNELS.index(item[0])):
        figures = metrics["channels"].get(channel, {})
        rows.append((channel, figures.get("recall_at_k"), figures.get("mrr_at_k"), figures.get("ndcg_at_k"), latency))
    return rows


# ---- catalog access -----------------------------------------------------------------------------------


def _check_catalog(catalog_path: Path) -> None:
    with catalog.connect_read_only(catalog_path) as con:
        tables = catalog.table_names(con)
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
