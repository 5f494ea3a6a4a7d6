"""Artifact formats a version is checked against when it is sealed and published: FAISS loads, DuckDB opens, SCIP
parses, the ID map and the catalog agree with the index, the tuning profile parses. The lifecycle is given these
checks (`LifecycleRoot(validation=...)`, by default this module, imported only when something is validated), so
reading `CURRENT` never loads FAISS, DuckDB or protobuf."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kg_assets.lib import catalog, faiss_index, idmap, scip, tuning
from kg_assets.lib.errors import ValidationError
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, TUNING_FILE


def check_sidecar(path: Path) -> None:
    """A mutable sidecar of a complete version still parses (`tuning.json`: a well-typed profile)."""
    if path.name == TUNING_FILE:
        tuning.load_profile(path)


def validate_artifacts(vdir: Path) -> dict[str, Any]:
    """Validate the canonical files in a version directory and return summary attributes for the manifest.

    FAISS loads (dimension, ntotal), DuckDB opens read-only, SCIP parses, the ID map has one row per FAISS row
    with the same ids, the tuning profile parses, and dimensions and counts agree where both sides know them.
    """
    index = faiss_index.read_index(vdir / FAISS_FILE)
    summary = faiss_index.summarize(index)
    attrs: dict[str, Any] = {
        "faiss_dim": summary.dim,
        "faiss_ntotal": summary.ntotal,
        "faiss_factory": summary.factory,
        "faiss_metric": summary.metric,
    }
    cat = catalog.describe(vdir / CATALOG_FILE)
    attrs["catalog_tables"] = list(cat.tables)
    if cat.chunk_count is not None:
        attrs["chunk_count"] = cat.chunk_count
        if cat.chunk_count != summary.ntotal:
            raise ValidationError(
                f"catalog has {cat.chunk_count} chunks but the FAISS index has {summary.ntotal} vectors"
            )
    if cat.embedding_dim is not None:
        attrs["embedder_dim"] = cat.embedding_dim
        if cat.embedding_dim != summary.dim:
            raise ValidationError(
                f"catalog embeddings have dimension {cat.embedding_dim} but the FAISS index has {summary.dim}"
            )
    if cat.embedder:
        attrs["embedder_name"] = cat.embedder
    scip_summary = scip.summarize(scip.read_index(vdir / SCIP_FILE))
    attrs.update({f"scip_{k}": v for k, v in asdict(scip_summary).items()})
    if (vdir / IDMAP_FILE).exists():
        table = idmap.read_idmap(vdir / IDMAP_FILE)
        if table.num_rows != summary.ntotal:
            raise ValidationError(f"ID map has {table.num_rows} rows but the FAISS index has {summary.ntotal} vectors")
        order = np.argsort(table.column("faiss_row").to_numpy())
        mapped = table.column("external_id").to_numpy()[order]
        if not np.array_equal(mapped, faiss_index.external_ids(index)):
            raise ValidationError("ID map external_id values differ from the FAISS index's ids")
        attrs["idmap_rows"] = table.num_rows
    if (vdir / TUNING_FILE).exists():
        tuning.load_profile(vdir / TUNING_FILE)
    return attrs
