"""Tune one complete version: pick query sets, compute (cached) exact ground truth, sweep, write the profile;
or record manual overrides; or report the active profile."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from kg_assets.lib import catalog, faiss_index, query_sets, tuning
from kg_assets.lib.channels import Corpus
from kg_assets.lib.embedding import version_embedder
from kg_assets.lib.errors import UsageError
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets.lib.progress import Progress
from kg_assets.lib.search import version_vectors
from kg_assets.lib.settings import check_bounds, setting

QUICK_SAMPLES = 200
FULL_SAMPLES = 1000
MAX_DOC_QUERIES = 200


@dataclass(frozen=True)
class TuneSettings:
    """A sweep: the single definition of `indexctl tune`'s sweep options and the tuning asset's config (both
    derived from these fields; the asset adds the override knobs of `tuning.KNOBS`)."""

    mode: str = setting("quick", "quick (bisection), full (the whole grid, frontier re-timed) or overrides.")
    samples: int | None = setting(None, f"Self-queries ({QUICK_SAMPLES} quick, {FULL_SAMPLES} full).", minimum=1)
    target_recall: float = setting(0.95, "Recall@k the chosen point must reach.", minimum=0, maximum=1)
    k: int = setting(10, "Recall@k.", minimum=1, flags=("-k", "--k"))
    seed: int = setting(0, "Seed of the self-query sample and of the generated queries kept.")
    queries_file: Path | None = setting(None, query_sets.QUERIES_HELP, flags=("--queries",))
    generated_queries: bool = setting(True, query_sets.GENERATED_HELP)


@dataclass(frozen=True)
class QuerySet:
    vectors: np.ndarray
    counts: dict[str, int]  # queries per source: self, docstrings, file


def query_set(
    vdir: Path, ids: np.ndarray, vectors: np.ndarray, samples: int, seed: int, queries_file: Path | None, texts: bool
) -> QuerySet:
    """Seeded self-queries from the catalog, plus served-style text queries (a file, the docstrings)."""
    rows = query_sets.self_sample(ids, samples, seed)
    parts, counts = [vectors[rows]], {"self": len(rows)}
    text_queries: dict[str, list[str]] = {}
    if queries_file is not None:
        text_queries["file"] = [q.text for q in query_sets.read_labelled_queries(queries_file, vdir / CATALOG_FILE)]
    if texts:
        generated = query_sets.docstring_queries(vdir / CATALOG_FILE, MAX_DOC_QUERIES, seed)
        text_queries["docstrings"] = [q.text for q in generated]
    wanted = {k: v for k, v in text_queries.items() if v}
    if wanted:
        embedder = version_embedder(catalog.read_meta(vdir / CATALOG_FILE), vdir.name)
        if embedder is None:
            if "file" in wanted:
                raise UsageError("this version records no embedder, so --queries cannot be embedded for it")
        else:
            for source, texts_of in wanted.items():
                parts.append(embedder.embed(texts_of))
                counts[source] = len(texts_of)
    return QuerySet(np.ascontiguousarray(np.vstack(parts), dtype=np.float32), counts)


def tune_version(
    root: LifecycleRoot,
    version: str | None,
    settings: TuneSettings = TuneSettings(),
    *,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Sweep the version's runtime knobs against exact ground truth and write its `tuning.json`."""
    check_bounds(settings)
    if settings.mode not in ("quick", "full"):
        raise UsageError(f"a sweep's mode is quick or full, not {settings.mode!r}")
    if settings.target_recall <= 0:
        raise UsageError("--target-recall must be in (0, 1]")
    full, target, seed = settings.mode == "full", settings.target_recall, settings.seed
    version = root.resolve_version(version)
    vdir = root.version_dir(version)
    index = faiss_index.read_index(vdir / FAISS_FILE)
    ids, vectors = version_vectors(root, version)
    samples = settings.samples or (FULL_SAMPLES if full else QUICK_SAMPLES)
    queries = query_set(vdir, ids, vectors, samples, seed, settings.queries_file, settings.generated_queries)
    k = min(settings.k, len(ids))
    cache = tuning.ground_truth_cache(root.root / ".cache" / "tuning", version, queries.vectors, k)
    _, truth = tuning.cached_exact_topk(cache, queries.vectors, vectors, ids, k)
    corpus = Corpus(ids, vectors)
    chosen, frontier, measured = tuning.sweep(
        index, corpus, queries.vectors, truth, target, full=full, progress=progress
    )
    previous = tuning.load_profile_if_any(vdir) or {}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    profile = {
        "param_str": tuning.param_string(chosen.params),
        **{name: value for name, value in chosen.params.items()},
        "k": k,
        "target_recall": target,
        "recall_at_k": round(chosen.recall, 4),
        "latency_ms": round(chosen.latency_ms, 4),
        "qps": round(chosen.qps, 1),
        "met_target": chosen.recall >= target,
        "mode": "full" if full else "quick",
        "queries": {**queries.counts, "seed": seed},
        "points_measured": len(measured),
        "bytes_per_query": tuning.memory_touched(index, chosen.params, k),
        "frontier": [tuning.point_dict(p, index, k) for p in frontier],
        "factory": faiss_index.factory_string(index),
        "ntotal": index.ntotal,
        "profile_at": now,
        "updated_at": now,
        "overrides": previous.get("overrides") or {},
    }
    tuning.write_profile(vdir, profile, run_id=run_id)
    return {"version": version, **profile}


def set_overrides(
    root: LifecycleRoot, version: str | None, overrides: dict[str, float], *, run_id: str | None = None
) -> dict[str, Any]:
    """Persist manual knob values in the profile's `overrides` (validated against the index); they win on load."""
    version = root.resolve_version(version)
    vdir = root.version_dir(version)
    for name, value in overrides.items():
        if name in tuning.KNOBS and value < 1:
            raise UsageError(f"{tuning.KNOBS[name].flag} must be at least 1, got {value}")
    index = faiss_index.read_index(vdir / FAISS_FILE)
    tuning.set_knobs(index, overrides)  # UsageError for a knob this index lacks
    profile = tuning.load_profile_if_any(vdir) or {}
    profile["overrides"] = {**(profile.get("overrides") or {}), **overrides}
    profile["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    profile.setdefault("factory", faiss_index.factory_string(index))
    profile.setdefault("ntotal", index.ntotal)
    tuning.write_profile(vdir, profile, run_id=run_id)
    return {"version": version, **profile}


def active_profile(root: LifecycleRoot, version: str | None) -> dict[str, Any]:
    """What a load of the version runs with: knob values read back from the index after applying the profile."""
    version = root.resolve_version(version)
    vdir = root.version_dir(version)
    index = faiss_index.read_index(vdir / FAISS_FILE)
    profile = tuning.load_profile_if_any(vdir)
    active = tuning.active_knobs(index, tuning.apply_profile(index, profile))
    profile = profile or {}
    return {
        "version": version,
        "factory": faiss_index.factory_string(index),
        "active": active,
        "overrides": profile.get("overrides") or {},
        "param_str": profile.get("param_str", ""),
        "recall_at_k": profile.get("recall_at_k"),
        "k": profile.get("k"),
        "latency_ms": profile.get("latency_ms"),
        "qps": profile.get("qps"),
        "target_recall": profile.get("target_recall"),
        "queries": profile.get("queries"),
        "profile_at": profile.get("profile_at"),
        "has_profile": bool(profile),
    }
