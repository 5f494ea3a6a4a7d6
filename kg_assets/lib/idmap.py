"""The FAISS-row to `chunk_id` map as a Parquet table (`faiss_idmap.parquet`)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.fsutil import atomic_write_bytes

SCHEMA = pa.schema(
    [
        ("faiss_row", pa.int64()),
        ("external_id", pa.int64()),
        ("index_name", pa.string()),
        ("ts", pa.timestamp("ns", tz="UTC")),
    ]
)


def idmap_table(ids: np.ndarray, index_name: str) -> pa.Table:
    """One row per FAISS row: its position, its external id (`chunk_id`), the index file name, export time."""
    n = len(ids)
    now = pa.scalar(datetime.now(UTC), type=SCHEMA.field("ts").type)
    return pa.table(
        {
            "faiss_row": pa.array(np.arange(n, dtype=np.int64)),
            "external_id": pa.array(np.asarray(ids, dtype=np.int64)),
            "index_name": pa.array([index_name] * n, type=pa.string()),
            "ts": pa.repeat(now, n),
        },
        schema=SCHEMA,
    )


def write_idmap(table: pa.Table, path: Path) -> None:
    """Write the id map atomically (snappy Parquet)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="snappy")
    atomic_write_bytes(Path(path), buf.getvalue())


def read_idmap(path: Path) -> pa.Table:
    """Read an id map and check it has the two columns every consumer joins on."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"ID map not found: {path}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationError(f"{path} is not a readable Parquet ID map ({exc})") from None
    missing = {"faiss_row", "external_id"} - set(table.column_names)
    if missing:
        raise ValidationError(f"{path} lacks ID-map columns {sorted(missing)}")
    return table


def export_idmap(index_path: Path, out: Path) -> int:
    """Write the ID map of the FAISS index at `index_path` to `out`; returns its row count."""
    from kg_assets.lib import faiss_index

    ids = faiss_index.external_ids(faiss_index.read_index(index_path))
    write_idmap(idmap_table(ids, Path(index_path).name), Path(out))
    return len(ids)
