"""The DuckDB catalog of a version (`catalog.duckdb`): build it, refresh its ID-map join, read it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from kg_assets.lib.errors import ConflictError, NotFoundError, ValidationError
from kg_assets.lib.fsutil import atomic_write_npy, fsync_dir, sha256_file, temp_sibling

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class CatalogSummary:
    """Tables of a catalog, and when it has them, its chunk count, vector dimension and embedder."""

    tables: tuple[str, ...]
    chunk_count: int | None
    embedding_dim: int | None
    embedder: str | None


def connect_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open an existing catalog read-only; ConflictError while another process holds it for writing,
    ValidationError when the file is not a DuckDB database."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"DuckDB catalog not found: {path}")
    try:
        return duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise open_error(path, exc) from None


def open_error(path: Path, exc: duckdb.Error) -> ConflictError | ValidationError:
    """Why DuckDB could not open `path` to read: held by a writing process (a conflict), or not a database."""
    reason = str(exc).splitlines()[0]
    if isinstance(exc, duckdb.IOException) and "lock" in reason:
        return ConflictError(f"{path} is held by another process ({reason}); retry when it is done")
    return ValidationError(f"{path} is not a readable DuckDB database ({reason})")


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the tables and views of the connection's own database (not of databases attached to it)."""
    query = "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database()"
    return {r[0] for r in con.execute(query).fetchall()}


def connect_for_writing(path: Path) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file to write; ConflictError when another process holds it (DuckDB allows one writing
    process), ValidationError when it is not a DuckDB database."""
    try:
        return duckdb.connect(str(path))
    except duckdb.IOException as exc:
        raise ConflictError(f"{path} is in use ({str(exc).splitlines()[0]})") from None
    except duckdb.Error as exc:
        raise ValidationError(f"cannot open {path} for writing ({str(exc).splitlines()[0]})") from None


def describe(path: Path) -> CatalogSummary:
    """Read the catalog's shape without changing it (read-only connection)."""
    with connect_read_only(path) as con:
        try:
            tables = tuple(sorted(table_names(con)))
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


def row_counts(path: Path, tables: tuple[str, ...]) -> dict[str, int]:
    """Rows of each of `tables` the catalog has (read-only)."""
    with connect_read_only(path) as con:
        have = table_names(con)
        return {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables if t in have}


# ---- building -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetRows:
    """Chunk rows with an `embedding` column in the Parquet files matching `glob` (a sharded build writes one
    per shard); `filesystem` is the fsspec filesystem of a URL glob, None for local files."""

    glob: str
    filesystem: Any = None


def write_catalog(
    path: Path,
    chunks: pa.Table | ParquetRows,
    embeddings: np.ndarray | None,
    modules: pa.Table,
    scip_tables: dict[str, pa.Table],
    idmap_path: Path,
    meta: dict[str, str],
    tables: dict[str, pa.Table] | None = None,
) -> int:
    """Create a hermetic catalog at `path` (built beside it, then renamed); returns its chunk count.

    `chunks` is a table whose rows `embeddings` (then given) holds the vectors of, or Parquet files already
    carrying an `embedding` column, read in one DuckDB `read_parquet` over their glob.
    Tables: `chunks` (with the `embedding FLOAT[d]` column), `modules`, `scip_symbols`, `scip_occurrences`,
    `kg_meta`, any further `tables` as given (the build's `file_copies`, `ts_references`), and the ID-map objects
    `faiss_idmap_mat` (+ `_meta`), `faiss_idmap`, `v_faiss_join`; view `v_chunk_symbols` maps chunks to the SCIP
    symbols defined inside them.
    """
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with duckdb.connect(str(tmp)) as con:
            if isinstance(chunks, ParquetRows):
                if chunks.filesystem is not None:
                    con.register_filesystem(chunks.filesystem)
                quoted = chunks.glob.replace("'", "''")
                source = f"read_parquet('{quoted}')"
                dim = con.execute(f"SELECT len(embedding) FROM {source} LIMIT 1").fetchone()[0]
            else:
                dim = embeddings.shape[1]
                import pyarrow as pa  # only a build writes vectors; readers never load pyarrow for it

                vectors = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), type=pa.float32()), dim)
                con.register("chunk_rows", chunks.append_column("embedding", vectors))
                source = "chunk_rows"
            con.execute(
                f"CREATE TABLE chunks AS SELECT * EXCLUDE (embedding), embedding::FLOAT[{dim}] AS embedding "
                f"FROM {source} ORDER BY chunk_id"
            )
            con.execute("ALTER TABLE chunks ADD PRIMARY KEY (chunk_id)")
            for name, table in {"modules": modules, **scip_tables, **(tables or {})}.items():
                con.register("_incoming", table)
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM _incoming")
                con.unregister("_incoming")
            con.execute("CREATE TABLE kg_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.executemany("INSERT INTO kg_meta VALUES (?, ?)", sorted(meta.items()))
            con.execute(
                """CREATE VIEW v_chunk_symbols AS
                SELECT c.chunk_id, o.symbol
                FROM scip_occurrences o
                JOIN chunks c ON c.uri = o.path AND o.start_line + 1 BETWEEN c.start_line AND c.end_line
                WHERE o.is_definition AND NOT starts_with(o.symbol, 'local ')"""
            )
            refresh_idmap(con, idmap_path, source_name=idmap_path.name)
            count = con.execute("SELECT count(*) FROM chunks").fetchone()[0]
            # Written into the file here, where a failure (a full disk) raises naming it: the checkpoint at close
            # fails silently, leaving the tables in a WAL that the rename below would leave behind.
            con.execute("CHECKPOINT")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
    fsync_dir(path.parent)
    return count


@dataclass(frozen=True)
class JoinRefresh:
    refreshed: bool
    rows: int
    checksum: str


def refresh_idmap(con: duckdb.DuckDBPyConnection, idmap_path: Path, *, source_name: str | None = None) -> JoinRefresh:
    """Install the ID-map objects from a Parquet file, rebuilding them only when the file's sha256 changed.

    `faiss_idmap_mat` is a table copy of the file (so the catalog never points outside itself),
    `faiss_idmap` a view over it, `v_faiss_join` the FAISS rows joined to `chunks` on `chunk_id` in row order,
    and `faiss_idmap_mat_meta` records which file and checksum the copy came from.
    """
    idmap_path = Path(idmap_path).absolute()
    checksum = sha256_file(idmap_path)
    source = source_name or str(idmap_path)
    con.execute(
        "CREATE TABLE IF NOT EXISTS faiss_idmap_mat_meta "
        "(source VARCHAR, checksum VARCHAR, row_count BIGINT, updated_at TIMESTAMPTZ)"
    )
    row = con.execute(
        "SELECT checksum, row_count FROM faiss_idmap_mat_meta WHERE source = ? ORDER BY updated_at DESC LIMIT 1",
        [source],
    ).fetchone()
    if row and row[0] == checksum and "faiss_idmap_mat" in table_names(con):
        return JoinRefresh(False, row[1], checksum)
    con.execute(
        "CREATE OR REPLACE TABLE faiss_idmap_mat AS "
        "SELECT faiss_row, external_id, index_name FROM read_parquet(?) ORDER BY faiss_row",
        [str(idmap_path)],
    )
    rows = con.execute("SELECT count(*) FROM faiss_idmap_mat").fetchone()[0]
    con.execute("DELETE FROM faiss_idmap_mat_meta WHERE source = ?", [source])
    con.execute("INSERT INTO faiss_idmap_mat_meta VALUES (?, ?, ?, now())", [source, checksum, rows])
    con.execute("CREATE OR REPLACE VIEW faiss_idmap AS SELECT faiss_row, external_id FROM faiss_idmap_mat")
    con.execute(
        "CREATE OR REPLACE VIEW v_faiss_join AS SELECT i.faiss_row, c.* FROM faiss_idmap i "
        "JOIN chunks c ON c.chunk_id = i.external_id ORDER BY i.faiss_row"
    )
    return JoinRefresh(True, rows, checksum)


def refresh_join(duckdb_path: Path, idmap_path: Path) -> JoinRefresh:
    """Refresh the ID-map objects in an existing catalog that has a `chunks` table (see `refresh_idmap`)."""
    duckdb_path = Path(duckdb_path)
    if not duckdb_path.is_file():
        raise NotFoundError(f"DuckDB catalog not found: {duckdb_path}")
    if not Path(idmap_path).is_file():
        raise NotFoundError(f"ID map not found: {idmap_path}")
    with connect_for_writing(duckdb_path) as con:
        if "chunks" not in table_names(con):
            raise ValidationError(f"{duckdb_path} has no chunks table to join the ID map to")
        return refresh_idmap(con, idmap_path)


def chunk_vectors(path: Path, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(chunk ids, embeddings) of a catalog, ordered by chunk id.

    With `cache_dir`, a directory whose name pins this catalog's exact bytes (its sha256), both arrays are saved
    there as .npy on the first call and memory-mapped read-only afterwards: a million 384-d vectors then load in
    milliseconds instead of seconds of DuckDB scan and Arrow conversion. The catalog stays the source of truth.
    """
    if cache_dir is not None:
        ids_path, vectors_path = cache_dir / "ids.npy", cache_dir / "vectors.npy"
        if ids_path.is_file():  # written last, so the vectors beside it are complete
            return np.load(ids_path), np.load(vectors_path, mmap_mode="r")
    with connect_read_only(path) as con:
        # The table is written in chunk_id order and scans keep it; sorting here would cost more than checking.
        table = con.sql("SELECT chunk_id, embedding FROM chunks").to_arrow_table()
    ids = table.column("chunk_id").to_numpy()
    dim = table.schema.field("embedding").type.list_size
    vectors = np.concatenate(
        [chunk.flatten().to_numpy().reshape(-1, dim) for chunk in table.column("embedding").chunks]
        or [np.empty((0, dim), np.float32)]
    ).astype(np.float32, copy=False)
    del table
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        order = np.argsort(ids, kind="stable")
        ids, vectors = ids[order], vectors[order]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_npy(vectors_path, vectors)
        atomic_write_npy(ids_path, ids)
    return ids, vectors


def read_meta(path: Path) -> dict[str, str]:
    """The catalog's `kg_meta` (embedder, fingerprint, repo) as a dict; empty when it has no such table (a catalog
    staged from elsewhere)."""
    with connect_read_only(path) as con:
        if "kg_meta" not in table_names(con):
            return {}
        return dict(con.execute("SELECT key, value FROM kg_meta").fetchall())


def hydrate(path: Path, chunk_ids: list[int]) -> dict[int, dict]:
    """Catalog rows (uri, language, lines, text, symbols defined) for the given chunk ids, keyed by id."""
    with connect_read_only(path) as con:
        return hydrate_with(con, chunk_ids)


def hydrate_with(con: duckdb.DuckDBPyConnection, chunk_ids: list[int]) -> dict[int, dict]:
    """`hydrate` on an open connection (a server's cursor)."""
    rows = con.execute(
        "SELECT chunk_id, uri, language, start_line, end_line, text, symbols FROM chunks WHERE chunk_id IN "
        "(SELECT unnest(?::BIGINT[]))",
        [chunk_ids],
    ).fetchall()
    keys = ("chunk_id", "uri", "language", "start_line", "end_line", "text", "symbols")
    return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}


# ---- eval pool and coverage views ---------------------------------------------------------------------

COVERAGE_SOURCES = {  # tables the coverage view joins, copied from the evaluated version's catalog when absent
    "chunks": "SELECT chunk_id, uri, language, start_line, end_line, symbols FROM src.chunks",
    "modules": "SELECT * FROM src.modules",
}


def install_pool_views(db_path: Path, pool_path: Path, source_catalog: Path, source_key: str) -> None:
    """Create or refresh `v_faiss_pool` (the eval pool's rows) and `v_pool_coverage` (pool rows joined with
    `chunks` on chunk_id and `modules` on repo path) in the DuckDB file `db_path`.

    `chunks` and `modules` are the database's own when it has them (a catalog of the operator's); otherwise they
    are copied (without vectors or text) from the evaluated catalog, attached read-only, and recorded in
    `kg_eval_sources` under `source_key` (the catalog's sha256), so they are copied again only when the source
    changes. `pool_path` is usually the `latest` link, so the views follow the newest run. The source catalog is
    never written.
    """
    db_path = Path(db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with connect_for_writing(db_path) as con:
        con.execute("CREATE TABLE IF NOT EXISTS kg_eval_sources (table_name VARCHAR PRIMARY KEY, source VARCHAR)")
        ours = dict(con.execute("SELECT table_name, source FROM kg_eval_sources").fetchall())
        have = table_names(con)
        stale = [t for t in COVERAGE_SOURCES if (t in ours or t not in have) and ours.get(t) != source_key]
        con.execute("BEGIN")
        if stale:
            con.execute(f"ATTACH '{_sql_literal(source_catalog)}' AS src (READ_ONLY)")
        for table in stale:
            con.execute(f"CREATE OR REPLACE TABLE {table} AS {COVERAGE_SOURCES[table]}")
            con.execute("INSERT OR REPLACE INTO kg_eval_sources VALUES (?, ?)", [table, source_key])
        con.execute(f"CREATE OR REPLACE VIEW v_faiss_pool AS SELECT * FROM read_parquet('{_sql_literal(pool_path)}')")
        con.execute(
            """CREATE OR REPLACE VIEW v_pool_coverage AS
            SELECT p.*, c.language, m.repo_path, m.module_name
            FROM v_faiss_pool p
            LEFT JOIN chunks c ON c.chunk_id = p.chunk_id
            LEFT JOIN modules m ON m.repo_path = p.uri"""
        )
        con.execute("COMMIT")
        if stale:
            con.execute("DETACH src")


def _sql_literal(path: Path) -> str:
    return str(Path(path).absolute()).replace("'", "''")
