"""Query a complete version: embed the text with the version's own embedder, search its FAISS index with its
tuning profile applied, and hydrate the hits from its catalog. Reads only; never writes to the version."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kg_assets.lib import catalog, faiss_index, tuning
from kg_assets.lib.embedding import load_embedder, version_embedder
from kg_assets.lib.errors import NotFoundError, UsageError
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, LifecycleRoot
from kg_assets.lib.tuning import TUNING_FILE


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    chunk_id: int
    uri: str
    start_line: int
    end_line: int
    first_line: str


def resolve_version(root: LifecycleRoot, version: str | None) -> str:
    """The given version, else the current one; NotFoundError when there is neither."""
    if version is None:
        version = root.current()
        if version is None:
            raise NotFoundError(f"nothing is published under {root.root}; publish a version or pass --version")
    root.check_flip_target(version)
    return version


def version_vectors(root: LifecycleRoot, version: str) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, embeddings) of a complete version's catalog, through a cache keyed by the catalog's sha256
    (`<root>/.cache/vectors/`), so exact search over the whole corpus does not re-read DuckDB every time."""
    cache = root.root / ".cache" / "vectors" / root.catalog_sha256(version)
    return catalog.chunk_vectors(root.version_dir(version) / CATALOG_FILE, cache)


def search_version(root: LifecycleRoot, text: str, k: int = 10, version: str | None = None) -> tuple[str, list[Hit]]:
    if k < 1:
        raise UsageError("-k must be at least 1")
    if not text.strip():
        raise UsageError("the query is empty")
    version = resolve_version(root, version)
    vdir = root.version_dir(version)
    meta = catalog.read_meta(vdir / CATALOG_FILE)
    embedder = version_embedder(meta, version) or load_embedder("minilm")
    index = faiss_index.read_index(vdir / FAISS_FILE)
    if (vdir / TUNING_FILE).exists():
        tuning.apply_profile(index, tuning.load_profile(vdir / TUNING_FILE))
    scores, ids = faiss_index.search(index, embedder.embed([text]), min(k, index.ntotal))
    found = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i != -1]
    rows = catalog.hydrate(vdir / CATALOG_FILE, [i for _, i in found])
    hits = []
    for rank, (score, chunk_id) in enumerate(found, start=1):
        row = rows[chunk_id]
        first = next((line.strip() for line in row["text"].splitlines() if line.strip()), "")
        hits.append(Hit(rank, score, chunk_id, row["uri"], row["start_line"], row["end_line"], first))
    return version, hits
