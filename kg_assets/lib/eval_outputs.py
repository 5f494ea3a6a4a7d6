"""What an offline eval writes: the pool of every channel's hits (`pool.parquet`), the metrics (`metrics.json`)
and, last, the version's gate record and the `latest` link, each atomically and in that order."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kg_assets.lib import catalog
from kg_assets.lib.errors import ConflictError
from kg_assets.lib.eval_gate import GateRecord, record_path
from kg_assets.lib.fsutil import atomic_symlink, atomic_write_json, atomic_write_parquet, fsync_dir
from kg_assets.lib.lexical import code_tokens
from kg_assets.lib.lifecycle import LifecycleRoot

if TYPE_CHECKING:
    import pyarrow as pa

    from kg_assets.lib.evaluation import Hits, QuerySet

POOL_FILE = "pool.parquet"
METRICS_FILE = "metrics.json"
LATEST_LINK = "latest"


def symbol_hits(query_tokens: frozenset[str], symbols: list[str]) -> list[str]:
    """The chunk's symbols a query names: a symbol's name (last dotted part) as a whole token of the query, or
    all of its identifier parts among the query's tokens (`query_tokens` = `code_tokens` of the query)."""
    return [s for s in symbols if _names(s) and (_names(s)[0] in query_tokens or _names(s)[1] <= query_tokens)]


@functools.lru_cache(maxsize=1 << 16)
def _names(symbol: str) -> tuple[str, frozenset[str]] | None:
    """(whole lowercase name, identifier parts) of a symbol's last dotted part; None when it has no tokens."""
    name = symbol.rsplit(".", 1)[-1]
    parts = frozenset(code_tokens(name))
    return (name.lower().strip("_"), parts) if parts else None


@functools.cache
def pool_schema() -> pa.Schema:
    """The columns of `pool.parquet` (pyarrow is imported here: `indexctl` imports this module for every verb,
    a server included, and only an eval writes a pool)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("query_id", pa.string()),
            ("query_set", pa.string()),
            ("channel", pa.string()),
            ("rank", pa.int32()),
            ("chunk_id", pa.int64()),
            ("score", pa.float32()),
            ("uri", pa.string()),
            ("start_line", pa.int32()),
            ("end_line", pa.int32()),
            ("symbol_hits", pa.list_(pa.string())),
            ("is_positive", pa.bool_()),
        ]
    )


def pool_table(sets: list[QuerySet], results: dict[str, dict[str, Hits]], catalog_path: Path) -> pa.Table:
    """One row per hit, hydrated from the catalog (uri, lines, the chunk's symbols the query names)."""
    hit_ids = np.unique(np.concatenate([h.ids.ravel() for per_set in results.values() for h in per_set.values()]))
    rows = catalog.hydrate(catalog_path, hit_ids[hit_ids != -1].tolist())
    schema = pool_schema()
    cols: dict[str, list[Any]] = {name: [] for name in schema.names}
    for qs in sets:
        tokens = [frozenset(code_tokens(text)) for text in qs.texts]
        for channel, h in results[qs.name].items():
            queries, ranks = np.nonzero(h.ids != -1)
            chunk_ids = h.ids[queries, ranks].tolist()
            hits = [rows[i] for i in chunk_ids]
            cols["query_id"] += [qs.qids[q] for q in queries]
            cols["query_set"] += [qs.name] * len(hits)
            cols["channel"] += [channel] * len(hits)
            cols["rank"] += (ranks + 1).tolist()
            cols["chunk_id"] += chunk_ids
            cols["score"] += h.scores[queries, ranks].tolist()
            cols["uri"] += [r["uri"] for r in hits]
            cols["start_line"] += [r["start_line"] for r in hits]
            cols["end_line"] += [r["end_line"] for r in hits]
            cols["symbol_hits"] += [symbol_hits(tokens[q], r["symbols"]) for q, r in zip(queries, hits, strict=True)]
            if qs.positives is None:
                cols["is_positive"] += [None] * len(hits)
            else:
                cols["is_positive"] += [c in qs.positives[q] for q, c in zip(queries, chunk_ids, strict=True)]
    import pyarrow as pa

    return pa.table(cols, schema=schema)


def write_outputs(
    root: LifecycleRoot,
    version: str,
    run_dir: Path,
    pool: pa.Table,
    metrics: dict[str, Any],
    summary: dict[str, Any],
    catalog_sha: str,
) -> GateRecord:
    """pool.parquet and metrics.json (each atomic) in a new run directory, then the version's gate record, then
    `latest` flipped to the run: publish never sees a gate older than the newest run's files."""
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ConflictError(f"{run_dir} already exists; eval run ids are unique") from None
    fsync_dir(run_dir.parent)
    fsync_dir(run_dir.parent.parent)
    atomic_write_parquet(run_dir / POOL_FILE, pool)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    record = GateRecord(
        version=version,
        run_id=metrics["run_id"],
        at=metrics["started_at"],
        catalog_sha256=catalog_sha,
        metrics_path=str(run_dir / METRICS_FILE),
        pool_path=str(run_dir / POOL_FILE),
        pool_rows=pool.num_rows,
        duckdb=metrics["outputs"]["duckdb"],
        gate=metrics["gate"],
        summary=summary,
    )
    path = record_path(root, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    atomic_symlink(run_dir.parent / LATEST_LINK, run_dir.name)
    return record
