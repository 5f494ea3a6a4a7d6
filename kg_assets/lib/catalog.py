"""The DuckDB catalog of a version (`catalog.duckdb`): open it read-only and describe what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

from kg_assets.lib.errors import NotFoundError, ValidationError


@dataclass(frozen=True)
class CatalogSummary:
    """Tables of a catalog, and when it has them, its chunk count, vector dimension and embedder."""

    tables: tuple[str, ...]
    chunk_count: int | None
    embedding_dim: int | None
    embedder: str | None


def connect_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open an existing catalog read-only; ValidationError when the file is not a DuckDB database."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"DuckDB catalog not found: {path}")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0]
        raise ValidationError(f"{path} is not a readable DuckDB database ({reason})") from None


def describe(path: Path) -> CatalogSummary:
    """Read the catalog's shape without changing it (read-only connection)."""
    with connect_read_only(path) as con:
        try:
            tables = tuple(
                row[0]
                for row in con.execute(
                    "SELECT table_name FROM information_schema.tables ORDER BY table_name"
                ).fetchall()
            )
            chunk_count = embedding_dim = embedder = None
            if "chunks" in tables:
                chunk_count = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
                columns = {r[0] for r in con.execute("DESCRIBE chunks").fetchall()}
                if "embedding" in columns:
                    row = con.execute(
                        "SELECT len(embedding) FROM chunks WHERE embedding IS NOT NULL LIMIT 1"
                    ).fetchone()
                    embedding_dim = row[0] if row else None
            if "kg_meta" in tables:
                row = con.execute("SELECT value FROM kg_meta WHERE key = 'embedder'").fetchone()
                embedder = row[0] if row else None
        except duckdb.Error as exc:
            raise ValidationError(f"{path}: catalog query failed ({str(exc).splitlines()[0]})") from None
    return CatalogSummary(tables, chunk_count, embedding_dim, embedder)
