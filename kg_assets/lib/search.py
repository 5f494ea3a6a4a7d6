"""One-shot queries of a complete version (the CLI's `search`), and the version lookups readers share. The search
itself is `retrieval`'s; this never writes to the version."""

from __future__ import annotations

import numpy as np

from kg_assets.lib import catalog
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets.lib.retrieval import SearchHit, VersionHandle, check_query


def version_vectors(root: LifecycleRoot, version: str) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, embeddings) of a complete version's catalog, through a cache keyed by the catalog's sha256
    (`<root>/.cache/vectors/`), so exact search over the whole corpus does not re-read DuckDB every time."""
    cache = root.root / ".cache" / "vectors" / root.catalog_sha256(version)
    return catalog.chunk_vectors(root.version_dir(version) / CATALOG_FILE, cache)


def search_version(
    root: LifecycleRoot, text: str, k: int = 10, version: str | None = None, mode: str = "hybrid"
) -> tuple[str, list[SearchHit], list[str]]:
    """One query against the given (else the current) version through the served retrieval stack: (version,
    hits, notes such as a missing lexical index). The request is checked before anything is loaded."""
    check_query(text, k, mode)
    version = root.resolve_version(version)
    with VersionHandle.open(root, version, quick_start=True) as handle:
        return version, handle.search(text, k, mode), handle.notes
