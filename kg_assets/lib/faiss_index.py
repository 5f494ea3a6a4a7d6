"""FAISS indexes: read and describe them, and map FAISS rows to external ids (`chunk_id`)."""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from kg_assets.lib.errors import NotFoundError, UsageError, ValidationError
from kg_assets.lib.fsutil import fsync_dir, temp_sibling


@dataclass(frozen=True)
class IndexSummary:
    """Shape of a FAISS index as read back from disk."""

    dim: int
    ntotal: int
    factory: str
    metric: str


def _read_failure(exc: RuntimeError) -> str:
    """FAISS's reason for not reading a file, without its source location and without the bytes it quotes (an
    unknown index type is shown as the file's first four bytes: they may be anyone's file contents)."""
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
    reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", reason)
    return re.sub(r" 0x[0-9a-fA-F]+ \(\".*?\"\)", "", reason)


def read_index(path: Path) -> faiss.Index:
    """Load a FAISS index; NotFoundError if absent, ValidationError if FAISS cannot parse it.

    Flat code arrays (Flat, the RFlat re-rank store) are memory-mapped rather than copied: loading a million
    384-d vectors then costs milliseconds, and pages are shared between processes. Callers never modify codes
    of a loaded index (a replaced file keeps its old inode, so the mapping stays valid).
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"FAISS index not found: {path}")
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        raise ValidationError(f"{path} is not a readable FAISS index ({_read_failure(exc)})") from None


def scores_exactly(index: faiss.Index) -> bool:
    """Whether the index scores its candidates with the exact vectors (Flat, IVF-Flat, HNSW-Flat storage, or
    an exact re-rank stage): re-ranking its results from the stored vectors would change nothing."""
    node = faiss.downcast_index(index)  # `index` stays referenced while `node` is used
    if isinstance(node, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        return scores_exactly(node.index)
    if isinstance(node, faiss.IndexRefine):
        return scores_exactly(node.refine_index)
    if isinstance(node, faiss.IndexHNSW):
        return scores_exactly(node.storage)
    return isinstance(node, faiss.IndexFlat | faiss.IndexIVFFlat)


def has_refine_stage(index: faiss.Index) -> bool:
    """Whether the index re-ranks its own candidates exactly (an IndexRefine, e.g. the `RFlat` of a factory)."""
    node = faiss.downcast_index(index)  # `index` stays referenced while `node` is used
    if isinstance(node, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        return has_refine_stage(node.index)
    return isinstance(node, faiss.IndexRefine)


def rerank_factor(index: faiss.Index, k_factor: float | None) -> float:
    """How many times k candidates a search of `index` fetches and re-scores exactly from the stored vectors, for
    a profile's `k_factor`: 1 when none is set, or when the index re-ranks itself (then k_factor is its
    IndexRefine's knob, set on the index)."""
    if k_factor is None or has_refine_stage(index):
        return 1.0
    return float(k_factor)


def factory_string(index: faiss.Index) -> str:
    """Reconstruct a factory-style description (`IVF64,PQ16x4fs,Refine(Flat)`) from an index's structure."""
    # Keep `index` referenced while `node` is used: a downcast wrapper does not own the C++ object.
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        return factory_string(node.index)
    if isinstance(node, faiss.IndexRefine):
        return f"{factory_string(node.base_index)},Refine({factory_string(node.refine_index)})"
    if isinstance(node, faiss.IndexHNSW):
        return f"HNSW{node.hnsw.nb_neighbors(1)}"
    if isinstance(node, faiss.IndexIVF):
        quantizer = faiss.downcast_index(node.quantizer)
        coarse = f"IVF{node.nlist}"
        if isinstance(quantizer, faiss.IndexHNSW):
            coarse += f"_HNSW{quantizer.hnsw.nb_neighbors(1)}"
        if isinstance(node, faiss.IndexIVFPQFastScan):
            return f"{coarse},PQ{node.M}x{node.nbits}fs"
        if isinstance(node, faiss.IndexIVFPQ):
            return f"{coarse},PQ{node.pq.M}x{node.pq.nbits}"
        if isinstance(node, faiss.IndexIVFFlat):
            return f"{coarse},Flat"
        return f"{coarse},{type(node).__name__}"
    if isinstance(node, faiss.IndexFlat):
        return "Flat"
    return type(node).__name__


def summarize(index: faiss.Index) -> IndexSummary:
    metric = "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    return IndexSummary(dim=index.d, ntotal=index.ntotal, factory=factory_string(index), metric=metric)


def external_ids(index: faiss.Index) -> np.ndarray:
    """External id of every FAISS row, in row order (positions when the index keeps no id map)."""
    node = faiss.downcast_index(index)  # `index` stays referenced: it owns the memory `node` reads
    if isinstance(node, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.vector_to_array(node.id_map).astype(np.int64)
    return np.arange(index.ntotal, dtype=np.int64)


# ---- building -----------------------------------------------------------------------------------------
# Index choice, with the numbers behind it (shared/research/faiss.md, 2 cores, d=384):
# - exact Flat runs ~1,800 queries/s/core at 100k and is exact; IVF-Flat at recall 0.95 is only 1.6x faster
#   there, so below FLAT_MAX vectors exact search is the right default;
# - IVF-Flat (nlist = 4*sqrt(n)) up to IVF_FLAT_MAX, where raw vectors still fit comfortably;
# - beyond, IVF with 4-bit fast-scan PQ (m = d/4 sub-quantizers, d/8 bytes per vector) plus an exact
#   re-rank from the raw vectors (RFlat)
#   measured fastest at recall@10 >= 0.95 on 1M vectors (6,300 q/s/core vs 440 for IVF-Flat).
# Training uses about 80 points per IVF list (FAISS warns below 39), drawn at random with a fixed seed.
FLAT_MAX = 50_000
IVF_FLAT_MAX = 500_000
TRAIN_POINTS_PER_LIST = 80
ADD_BATCH = 65_536
# Runtime defaults written into the index until `indexctl tune` measures better ones: natural-language queries
# need ~16x the nprobe of chunk-to-chunk queries, and 4-bit PQ needs a re-rank of 4-16x k to reach 0.95.
DEFAULT_K_FACTOR = 8


def default_nprobe(nlist: int) -> int:
    return min(nlist, max(8, nlist // 16))


@dataclass(frozen=True)
class BuildStats:
    factory: str
    ntotal: int
    train_size: int
    train_seconds: float
    add_seconds: float
    summary: IndexSummary


def nlist_for(n: int) -> int:
    return max(1, int(4 * math.sqrt(n)))


def choose_factory(n: int, dim: int) -> str:
    """The default index for `n` vectors of dimension `dim` (see the table above)."""
    if n < FLAT_MAX:
        return "Flat"
    if n < IVF_FLAT_MAX:
        return f"IVF{nlist_for(n)},Flat"
    m = max(d for d in range(1, dim // 4 + 1) if dim % d == 0 and d % 2 == 0) if dim >= 8 else dim
    return f"IVF{nlist_for(n)},PQ{m}x4fs,RFlat"


def metric_for(factory: str) -> int:
    """Inner product, except for 4-bit fast-scan PQ, whose inner-product look-up tables lose most of the recall
    (measured here: recall@10 0.49 vs 0.90 with L2 at the same settings). On L2-normalized vectors L2 ranks
    exactly as inner product does, and `search` converts its distances back to cosine scores."""
    return faiss.METRIC_L2 if re.search(r"PQ\d+x4fs", factory) else faiss.METRIC_INNER_PRODUCT


def check_factory(factory: str, dim: int) -> None:
    """UsageError unless FAISS accepts `factory` for vectors of dimension `dim`."""
    try:
        faiss.index_factory(dim, factory, metric_for(factory))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].rsplit(": ", 1)[-1] if str(exc).strip() else "rejected"
        raise UsageError(f"invalid FAISS factory {factory!r}: {reason}") from None


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str, *, seed: int = 0) -> tuple[faiss.Index, BuildStats]:
    """Train (on a seeded random sample) and fill an inner-product index wrapped in IndexIDMap2 with `ids`."""
    n, dim = vectors.shape
    t0 = time.perf_counter()
    rows = train_rows(factory, n, dim, seed)
    index = train_index(factory, dim, vectors[rows])
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    add_vectors(index, vectors, ids)
    finish_index(index)
    stats = BuildStats(factory, index.ntotal, len(rows), train_seconds, time.perf_counter() - t0, summarize(index))
    return index, stats


def train_rows(factory: str, n: int, dim: int, seed: int) -> np.ndarray:
    """The sorted rows (of `n` vectors) the index trains on: a seeded random sample of ~80 points per IVF list,
    none for an index that needs no training. A sharded build gathers exactly these rows from its shards."""
    check_factory(factory, dim)
    base = faiss.index_factory(dim, factory, metric_for(factory))
    if base.is_trained:
        return np.zeros(0, dtype=np.int64)
    ivf = _ivf_of(base)
    want = TRAIN_POINTS_PER_LIST * ivf.nlist if ivf is not None else 100_000
    size = min(n, max(want, 1))
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def train_index(factory: str, dim: int, sample: np.ndarray) -> faiss.Index:
    """An empty IndexIDMap2 over `factory`, trained on `sample` (unless it needs no training), with the default
    search knobs set: the one trained index every shard of a build encodes into a copy of."""
    check_factory(factory, dim)
    base = faiss.index_factory(dim, factory, metric_for(factory))
    ivf = _ivf_of(base)
    if ivf is not None and metric_for(factory) == faiss.METRIC_L2:  # i.e. 4-bit fast-scan PQ
        ivf.by_residual = True  # the factory leaves it off: recall@10 0.29 vs 0.88 with it on (measured here)
    if not base.is_trained:
        base.train(np.ascontiguousarray(sample, dtype=np.float32))
    if ivf is not None:
        ivf.nprobe = default_nprobe(ivf.nlist)
    refine = faiss.downcast_index(base)
    if isinstance(refine, faiss.IndexRefine):
        refine.k_factor = DEFAULT_K_FACTOR
    return faiss.IndexIDMap2(base)


def add_vectors(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add `vectors` with external `ids` in batches (bounded temporary memory)."""
    for start in range(0, len(vectors), ADD_BATCH):
        batch = np.ascontiguousarray(vectors[start : start + ADD_BATCH], dtype=np.float32)
        index.add_with_ids(batch, np.ascontiguousarray(ids[start : start + ADD_BATCH], dtype=np.int64))


def finish_index(index: faiss.Index) -> None:
    """Make an IVF index's rows reachable by `reconstruct` (its direct map), as every built index is."""
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.make_direct_map()


def trained_parts(index: faiss.Index) -> dict[str, bytes]:
    """What training fixed, by name: the `index type` (factory, dimension, metric), the `coarse quantizer` (IVF
    centroids) and the `PQ codebook` (an IVF-PQ's, fast-scan or not). Codes made with other values of any of them
    mean something else, so indexes merge only when all are equal. FAISS's `merge_from` refuses other coarse
    centroids (a RuntimeError) but appends codes made with another PQ codebook without a word (FAISS 1.15)."""
    parts = {"index type": f"{factory_string(index)}|{index.d}|{index.metric_type}".encode()}
    ivf = _ivf_of(index)
    if ivf is not None:
        parts["coarse quantizer"] = ivf.quantizer.reconstruct_n(0, ivf.nlist).tobytes()
        pq = getattr(faiss.downcast_index(ivf), "pq", None)  # extract_index_ivf gives the IndexIVF base class
        if pq is not None:
            parts["PQ codebook"] = faiss.vector_to_array(pq.centroids).tobytes()
    return parts


def trained_fingerprint(index: faiss.Index) -> str:
    """sha256 of `trained_parts`: two indexes can only be merged when their fingerprints are equal."""
    digest = hashlib.sha256()
    for name, value in trained_parts(index).items():
        digest.update(f"{name}:{len(value)}:".encode() + value)
    return digest.hexdigest()


def merge_indexes(parts: list[faiss.Index]) -> faiss.Index:
    """Append `parts[1:]` to `parts[0]` in order (ids and row order as if all were added to one index), after
    checking that every part was trained identically (ValidationError naming what differs otherwise). Returns
    `parts[0]`."""
    expected = trained_parts(parts[0])
    for number, part in enumerate(parts[1:], start=1):
        got = trained_parts(part)
        differs = next((name for name in (*expected, *got) if got.get(name) != expected.get(name)), None)
        if differs == "index type":
            raise ValidationError(
                f"shard {number} is a different index than shard 0 ({factory_string(part)}, {part.d} dimensions vs "
                f"{factory_string(parts[0])}, {parts[0].d}); rebuild the version"
            )
        if differs is not None:
            raise ValidationError(
                f"shard {number} was trained with a different {differs} than shard 0 ({factory_string(part)}); "
                "rebuild the version"
            )
        _append(parts[0], part, 0)
    finish_index(parts[0])
    return parts[0]


def _append(dst: faiss.Index, src: faiss.Index, id_offset: int) -> None:
    """Move `src`'s rows to the end of `dst`; internal ids of an index wrapped by an id map shift by the rows
    already in `dst`. IndexIDMap2 and IndexRefine have no usable `merge_from` of their own."""
    d, s = faiss.downcast_index(dst), faiss.downcast_index(src)  # `dst`, `src` stay referenced
    if isinstance(d, faiss.IndexIDMap2):
        _append(d.index, s.index, d.ntotal)
        ids = np.concatenate([faiss.vector_to_array(d.id_map), faiss.vector_to_array(s.id_map)])
        faiss.copy_array_to_vector(ids, d.id_map)
        d.ntotal = d.index.ntotal
        d.construct_rev_map()
    elif isinstance(d, faiss.IndexRefine):
        offset = d.ntotal
        _append(d.base_index, s.base_index, offset)
        _append(d.refine_index, s.refine_index, offset)
        d.ntotal = d.base_index.ntotal
    else:
        d.merge_from(s, id_offset if isinstance(d, faiss.IndexIVF) else 0)


def _ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def write_index(index: faiss.Index, path: Path) -> None:
    """Write an index atomically (temp file, fsync, rename)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (cosine scores, external ids) for each query row; ids are -1 where fewer than k hits exist."""
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    if index.metric_type == faiss.METRIC_L2:  # squared L2 between unit vectors = 2 - 2 cos
        scores = 1.0 - scores / 2.0
    return scores, ids
