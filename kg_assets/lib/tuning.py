"""Runtime tuning profiles (`tuning.json`): sweeps against exact ground truth, operating-point choice,
manual overrides, and applying a profile when an index is loaded.

Recall is measured against exact inner-product top-k over the whole corpus (the catalog's vectors) in the
`chunk_id` id space. Only knobs the index actually has are swept or set.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kg_assets.lib import faiss_index
from kg_assets.lib.channels import Corpus, search_with_profile
from kg_assets.lib.errors import NotFoundError, UsageError, ValidationError
from kg_assets.lib.fsutil import atomic_file, atomic_write_json, read_json
from kg_assets.lib.lifecycle import AUDIT_FILE, TUNING_FILE
from kg_assets.lib.progress import Progress


@dataclass(frozen=True)
class Knob:
    """A runtime knob a profile may set (each is a whole number or a factor, at least 1)."""

    name: str  # in tuning.json and, unless it is k_factor, in FAISS's ParameterSpace string
    kind: type[int] | type[float]
    flag: str  # the CLI override
    help: str
    limit: float | None  # largest accepted value, beyond which a search only overflows or stalls (None: nlist)


# The one table of runtime knobs: profiles, overrides, the CLI's override options and the Dagster config use it.
KNOBS: dict[str, Knob] = {
    knob.name: knob
    for knob in (
        Knob("nprobe", int, "--nprobe", "IVF lists probed.", None),
        Knob("efSearch", int, "--ef-search", "HNSW efSearch.", 1 << 16),
        Knob("quantizer_efSearch", int, "--quantizer-ef-search", "efSearch of an HNSW coarse quantizer.", 1 << 16),
        Knob("k_factor", float, "--k-factor", "Exact re-rank of ceil(k * k_factor) candidates.", 1024.0),
    )
}
FAISS_KNOBS = tuple(name for name in KNOBS if name != "k_factor")  # set through faiss.ParameterSpace
K_FACTORS = (1, 2, 4, 8, 16, 32)
EF_VALUES = (16, 32, 64, 128, 256, 512)
AUDIT_HISTORY = 20


def load_profile_if_any(vdir: Path) -> dict[str, Any] | None:
    """The version directory's tuning profile (`load_profile`), or None when it has none."""
    path = Path(vdir) / TUNING_FILE
    return load_profile(path) if path.exists() else None


def load_profile(path: Path) -> dict[str, Any]:
    """Parse a tuning profile; ValidationError unless it is a JSON object with well-typed knobs."""
    path = Path(path)
    try:
        profile = read_json(path)
    except FileNotFoundError:
        raise NotFoundError(f"tuning profile not found: {path}") from None
    except OSError as exc:
        raise ValidationError(f"{path} is unreadable ({exc.strerror})") from None
    except ValueError as exc:
        raise ValidationError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(profile, dict):
        raise ValidationError(f"{path} must hold a JSON object, not {type(profile).__name__}")
    overrides = profile.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ValidationError(f"{path}: overrides must be a JSON object")
    for section in (profile, overrides):
        for knob, kind in ((k.name, k.kind) for k in KNOBS.values()):
            value = section.get(knob)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValidationError(f"{path}: {knob} must be a finite positive {kind.__name__}, got {value!r}")
            if kind is int and value != int(value):
                raise ValidationError(f"{path}: {knob} must be a whole number, got {value!r}")
            if knob == "k_factor" and value < 1:
                raise ValidationError(f"{path}: k_factor must be at least 1, got {value!r}")
    if "param_str" in profile and not isinstance(profile["param_str"], str):
        raise ValidationError(f"{path}: param_str must be a string")
    return profile


# ---- knobs of an index --------------------------------------------------------------------------------


def index_nodes(index: faiss.Index) -> list[Any]:
    """The index and every index nested in it (IDMap, PreTransform, Refine, IVF quantizer), downcast.

    The caller keeps `index` alive while using the result (downcast wrappers do not own their objects).
    """
    found, todo = [], [index]
    while todo:
        node = faiss.downcast_index(todo.pop())
        found.append(node)
        for attr in ("index", "base_index"):
            child = getattr(node, attr, None)
            if isinstance(child, faiss.Index):
                todo.append(child)
        if isinstance(node, faiss.IndexIVF):
            todo.append(node.quantizer)
    return found


def index_knobs(index: faiss.Index) -> dict[str, list[float]]:
    """The runtime knobs `index` has, each with the values a sweep tries (powers of two for nprobe).

    `k_factor` is the exact re-rank factor: the knob of the index's own re-rank stage (IndexRefine) if it has
    one, else a re-rank from the version's stored vectors at search (`channels.search_with_profile`); an index
    that already scores exactly (Flat, IVF-Flat, HNSW-Flat) has none.
    """
    nodes = index_nodes(index)
    knobs: dict[str, list[float]] = {}
    ivf = next((n for n in nodes if isinstance(n, faiss.IndexIVF)), None)
    if ivf is not None:
        knobs["nprobe"] = [2**i for i in range(int(math.log2(ivf.nlist)) + 1)]
        if any(isinstance(n, faiss.IndexHNSW) for n in index_nodes(ivf.quantizer)):
            knobs["quantizer_efSearch"] = list(EF_VALUES)
    elif any(isinstance(n, faiss.IndexHNSW) for n in nodes):
        knobs["efSearch"] = list(EF_VALUES)
    if faiss_index.has_refine_stage(index) or not faiss_index.scores_exactly(index):
        knobs["k_factor"] = list(K_FACTORS)
    return knobs


def current_knobs(index: faiss.Index) -> dict[str, float]:
    """The knob values a loaded index runs with now (IVF nprobe, HNSW efSearch, IndexRefine k_factor)."""
    active: dict[str, float] = {}
    for node in index_nodes(index):
        if isinstance(node, faiss.IndexIVF):
            active["nprobe"] = node.nprobe
        elif isinstance(node, faiss.IndexHNSW):
            active["efSearch"] = node.hnsw.efSearch
        elif isinstance(node, faiss.IndexRefine):
            active["k_factor"] = round(float(node.k_factor), 4)  # stored as float32
    return active


def active_knobs(index: faiss.Index, applied: dict[str, float]) -> dict[str, float]:
    """What searches of a loaded index run with: the knobs it holds (`current_knobs`) and `applied`'s k_factor
    when that is a re-rank from the stored vectors outside the index."""
    active = current_knobs(index)
    if faiss_index.rerank_factor(index, applied.get("k_factor")) > 1:
        active["k_factor"] = applied["k_factor"]
    return active


def set_knobs(index: faiss.Index, params: dict[str, float]) -> None:
    """Apply knob values to a loaded index; UsageError for a knob it does not have.

    A k_factor on an index without its own re-rank stage is not held by the index: the search applies it
    (`channels.search_with_profile` with these params).
    """
    have = index_knobs(index)
    for name, value in params.items():
        if name not in have:
            why = (
                f"{faiss_index.factory_string(index)} already scores exactly, so there is nothing to re-rank"
                if name == "k_factor"
                else f"this index ({faiss_index.factory_string(index)}) has no {name} knob"
            )
            raise UsageError(f"{why}; it has: {', '.join(have) or 'no runtime knobs (exact search)'}")
        limit = KNOBS[name].limit or _ivf(index).nlist
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= limit:
            raise UsageError(
                f"{name}={value!r} is out of range for {faiss_index.factory_string(index)}: use 1 to {limit:g}"
            )
        if name == "k_factor":
            for node in index_nodes(index):
                if isinstance(node, faiss.IndexRefine):
                    node.k_factor = float(value)
        elif name == "quantizer_efSearch":
            for node in index_nodes(_ivf(index).quantizer):
                if isinstance(node, faiss.IndexHNSW):
                    node.hnsw.efSearch = int(value)
        else:
            faiss.ParameterSpace().set_index_parameter(index, name, float(value))


def _ivf(index: faiss.Index) -> faiss.IndexIVF:
    return next(n for n in index_nodes(index) if isinstance(n, faiss.IndexIVF))


def param_string(params: dict[str, float]) -> str:
    """The FAISS ParameterSpace string of the FAISS knobs (k_factor, applied on IndexRefine, is kept apart)."""
    return ",".join(f"{k}={int(v)}" for k, v in params.items() if k in FAISS_KNOBS)


def active_params(profile: dict[str, Any] | None) -> dict[str, float]:
    """Knob values a profile sets: its chosen point, with its overrides winning."""
    if not profile:
        return {}
    params = {k: profile[k] for k in KNOBS if profile.get(k) is not None}
    params.update({k: v for k, v in (profile.get("overrides") or {}).items() if v is not None})
    return params


def apply_profile(index: faiss.Index, profile: dict[str, Any] | None) -> dict[str, float]:
    """Set the profile's knobs that this index has (a profile never breaks a load); return what was set."""
    have = index_knobs(index)
    params = {k: v for k, v in active_params(profile).items() if k in have}
    set_knobs(index, params)
    return params


# ---- measuring ----------------------------------------------------------------------------------------


def exact_topk(queries: np.ndarray, corpus: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over the whole corpus, as (scores, chunk ids); FAISS batches the work.
    Ids are -1 past the corpus size (k > number of vectors)."""
    scores, rows = faiss.knn(np.ascontiguousarray(queries), np.ascontiguousarray(corpus), k, faiss.METRIC_INNER_PRODUCT)
    return scores, np.where(rows >= 0, ids[rows], -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k."""
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


@dataclass(frozen=True)
class Point:
    """One measured operating point."""

    params: dict[str, float]
    recall: float
    latency_ms: float  # median wall time per query, batched
    qps: float


def measure(
    index: faiss.Index, corpus: Corpus, params: dict[str, float], queries: np.ndarray, truth: np.ndarray, repeats: int
) -> Point:
    """Set `params` and search as served (a k_factor re-rank included); with `repeats` > 0, warm up once and time
    that many batches (median).

    `repeats` = 0 is a single timed search: enough for recall, a rough latency for steering a sweep.
    """
    set_knobs(index, params)
    k = truth.shape[1]
    if repeats:
        search_with_profile(index, params, corpus, queries, k)
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        _, found = search_with_profile(index, params, corpus, queries, k)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return Point(dict(params), recall_at_k(found, truth), 1000 * median / len(queries), len(queries) / median)


def pareto(points: Sequence[Point]) -> list[Point]:
    """Points no other point beats on both recall and latency, by increasing latency."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.latency_ms, -p.recall)):
        if not front or p.recall > front[-1].recall:
            front.append(p)
    return front


def sweep(
    index: faiss.Index,
    corpus: Corpus,
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    *,
    full: bool,
    repeats: int = 3,
    progress: Progress | None = None,
) -> tuple[Point, list[Point], list[Point]]:
    """Find the fastest point reaching `target` recall; return (chosen, frontier, all measured points).

    The main knob (`nprobe` for IVF, `efSearch` for HNSW) is bisected (it is monotone) for each combination of
    the other axes the index has: `quantizer_efSearch` (an HNSW coarse quantizer) and `k_factor`. Quick: single
    searches steer the bisection, a combination whose largest main-knob value already misses the target is
    skipped, then each combination's cheapest passing point is timed with a warm-up and `repeats` batches and the
    fastest kept. Full: every grid point timed that way, and every frontier point re-timed once more before
    choosing. `progress` gets (steps done, steps): one step per combination, one for the final timing.
    """
    knobs = index_knobs(index)
    main = next((k for k in ("nprobe", "efSearch") if k in knobs), None)
    axes = [name for name in ("quantizer_efSearch", "k_factor") if name in knobs]
    combos = [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*(knobs[a] for a in axes))]
    values = knobs[main] if main else [None]
    measured: dict[tuple, Point] = {}

    def at(main_value: float | None, others: dict[str, float]) -> Point:
        params = {**({main: main_value} if main else {}), **others}
        key = tuple(sorted(params.items()))
        if key not in measured:
            measured[key] = measure(index, corpus, params, queries, truth, repeats if full else 0)
        return measured[key]

    candidates: list[Point] = []
    steps = len(combos) + 1
    for done, others in enumerate(combos):
        if progress:
            progress(done, steps)
        if full or main is None:
            candidates += [at(value, others) for value in values]
            continue
        if at(values[-1], others).recall < target:
            continue  # this combination saturates below the target
        lo, hi = 0, len(values) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if at(values[mid], others).recall >= target:
                hi = mid
            else:
                lo = mid + 1
        candidates.append(at(values[lo], others))
    if progress:
        progress(len(combos), steps)
    points = list(measured.values())
    if full:
        candidates = pareto(points)
    if not any(p.recall >= target for p in candidates):
        # Nothing reaches the target: time the points within noise (0.005) of the best recall.
        best = max(p.recall for p in points)
        candidates = [p for p in pareto(points) if p.recall >= best - 0.005]
    timed = [measure(index, corpus, p.params, queries, truth, max(repeats, 3)) for p in candidates]
    if progress:
        progress(steps, steps)
    reaching = [p for p in timed if p.recall >= target]
    chosen = min(reaching or timed, key=lambda p: p.latency_ms)
    return chosen, pareto(points), points


# ---- profiles on disk ---------------------------------------------------------------------------------


def ground_truth_cache(cache_dir: Path, version: str, queries: np.ndarray, k: int) -> Path:
    """Where the exact top-k of these query vectors over this version's corpus is kept."""
    digest = hashlib.sha256(queries.tobytes() + str(k).encode()).hexdigest()[:16]
    return cache_dir / f"{version}-{digest}.npz"


def cached_exact_topk(
    cache: Path, queries: np.ndarray, corpus: np.ndarray, ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """`exact_topk`, memoized in `cache` (a version's corpus never changes); written atomically, so concurrent
    tunes of a version never read a half-written file or clobber each other's temp file."""
    if cache.is_file():
        with np.load(cache) as data:
            return data["scores"], data["ids"]
    scores, found = exact_topk(queries, corpus, ids, k)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(cache) as fh:
        np.savez(fh, scores=scores, ids=found)
    return scores, found


def write_profile(vdir: Path, profile: dict[str, Any], *, run_id: str | None) -> None:
    """Write `tuning.json` atomically and the audit snapshot `faiss.index.audit.json` beside it.

    The audit keeps the profile it replaced (and up to AUDIT_HISTORY earlier ones).
    """
    audit_path = vdir / AUDIT_FILE
    previous = load_profile_if_any(vdir)
    history = []
    if audit_path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):  # a damaged audit only loses its history
            history = list(read_json(audit_path).get("history", []))
    if previous:
        history = [previous, *history][:AUDIT_HISTORY]
    atomic_write_json(vdir / TUNING_FILE, profile)
    audit = {
        "active": active_params(profile),
        "overrides": profile.get("overrides") or {},
        "param_str": profile.get("param_str", ""),
        "profile": profile,
        "written_at": profile.get("updated_at"),
        "run_id": run_id,
        "history": history,
    }
    atomic_write_json(audit_path, audit)


def memory_touched(index: faiss.Index, params: dict[str, float], k: int) -> int | None:
    """Bytes a query reads at these settings, where the index type makes it computable (None for HNSW).

    Flat: every vector. IVF: the probed share of the codes (lists assumed balanced). Re-rank (the index's own
    stage or from the stored vectors): k * k_factor full vectors.
    """
    nodes = index_nodes(index)
    if any(isinstance(n, faiss.IndexHNSW) for n in nodes):
        return None
    ivf = next((n for n in nodes if isinstance(n, faiss.IndexIVF)), None)
    if ivf is not None:
        nprobe = params.get("nprobe", ivf.nprobe)
        touched = int(min(nprobe, ivf.nlist) / ivf.nlist * ivf.ntotal * ivf.code_size)
    else:
        touched = index.ntotal * index.d * 4
    refine = next((n for n in nodes if isinstance(n, faiss.IndexRefine)), None)
    k_factor = params.get("k_factor", refine.k_factor if refine is not None else None)
    if k_factor is not None:
        touched += int(k * k_factor * index.d * 4)
    return touched


def point_dict(point: Point, index: faiss.Index | None = None, k: int = 10) -> dict[str, Any]:
    """A point as stored in a profile (rounded; with the bytes it touches per query when computable)."""
    out = {**asdict(point), "latency_ms": round(point.latency_ms, 4), "qps": round(point.qps, 1)}
    if index is not None:
        out["bytes_per_query"] = memory_touched(index, point.params, k)
    return out
