"""FAISS indexes: read and describe them, and map FAISS rows to external ids (`chunk_id`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from kg_assets.lib.errors import NotFoundError, ValidationError


@dataclass(frozen=True)
class IndexSummary:
    """Shape of a FAISS index as read back from disk."""

    dim: int
    ntotal: int
    factory: str
    metric: str


def read_index(path: Path) -> faiss.Index:
    """Load a FAISS index; NotFoundError if absent, ValidationError if FAISS cannot parse it."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"FAISS index not found: {path}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ValidationError(f"{path} is not a readable FAISS index ({reason})") from None


def factory_string(index: faiss.Index) -> str:
    """Reconstruct a factory-style description (`IVF64,PQ16x4fs,Refine(Flat)`) from an index's structure."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return factory_string(index.index)
    if isinstance(index, faiss.IndexRefine):
        return f"{factory_string(index.base_index)},Refine({factory_string(index.refine_index)})"
    if isinstance(index, faiss.IndexPreTransform):
        return factory_string(index.index)
    if isinstance(index, faiss.IndexHNSW):
        return f"HNSW{index.hnsw.nb_neighbors(1)}"
    if isinstance(index, faiss.IndexIVF):
        quantizer = faiss.downcast_index(index.quantizer)
        coarse = f"IVF{index.nlist}"
        if isinstance(quantizer, faiss.IndexHNSW):
            coarse += f"_HNSW{quantizer.hnsw.nb_neighbors(1)}"
        if isinstance(index, faiss.IndexIVFPQFastScan):
            return f"{coarse},PQ{index.M}x{index.nbits}fs"
        if isinstance(index, faiss.IndexIVFPQ):
            return f"{coarse},PQ{index.pq.M}x{index.pq.nbits}"
        if isinstance(index, faiss.IndexIVFFlat):
            return f"{coarse},Flat"
        return f"{coarse},{type(index).__name__}"
    if isinstance(index, faiss.IndexFlat):
        return "Flat"
    return type(index).__name__


def summarize(index: faiss.Index) -> IndexSummary:
    metric = "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    return IndexSummary(dim=index.d, ntotal=index.ntotal, factory=factory_string(index), metric=metric)


def external_ids(index: faiss.Index) -> np.ndarray:
    """External id of every FAISS row, in row order (positions when the index keeps no id map)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return np.arange(index.ntotal, dtype=np.int64)
