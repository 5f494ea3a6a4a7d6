"""What changed between two complete versions: chunk and file churn, index shape and size, tuning point, and
each version's latest evaluation side by side. Reads only (both catalogs attached read-only).

Churn is by `chunk_id` (path + byte span) and content hash: a chunk is added or removed when its id exists on
one side only, changed when the id exists on both with different content. An edit that shifts the byte spans
of later chunks in a file therefore shows as removed + added; `new_texts` counts the new version's chunks
whose (path, content) the old one lacks, which is what an incremental build had to embed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from kg_assets.lib import catalog, tuning
from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.fsutil import tree_size
from kg_assets.lib.lifecycle import CATALOG_FILE, LifecycleRoot
from kg_assets.lib.tuning import TUNING_FILE

_SIDES = ("old", "new")


def diff_versions(root: LifecycleRoot, old: str, new: str) -> dict[str, Any]:
    """Compare complete versions `old` and `new`; NotFoundError unless both exist."""
    for version in (old, new):
        root.check_flip_target(version)
    churn = chunk_churn(root.version_dir(old) / CATALOG_FILE, root.version_dir(new) / CATALOG_FILE)
    sides = {side: version_summary(root, version) for side, version in zip(_SIDES, (old, new), strict=True)}
    fingerprints = {sides[side]["embedder_fingerprint"] for side in _SIDES}
    same_embedder = None if None in fingerprints else len(fingerprints) == 1  # None: a side records none
    return {**sides, **churn, "same_embedder": same_embedder}


def version_summary(root: LifecycleRoot, version: str) -> dict[str, Any]:
    """One side of a diff: shape and size from the manifest, the tuning point, the latest evaluation."""
    from kg_assets.lib.eval_gate import latest_eval

    manifest = root.read_manifest(version)
    attrs = manifest.get("attrs", {})
    vdir = root.version_dir(version)
    return {
        "version": version,
        "created": manifest.get("created"),
        "factory": attrs.get("faiss_factory"),
        "dim": attrs.get("faiss_dim"),
        "ntotal": attrs.get("faiss_ntotal"),
        "bytes": tree_size(vdir),
        "embedder": attrs.get("embedder_name"),
        "embedder_fingerprint": attrs.get("embedder_fingerprint"),
        "tuning": tuning_point(vdir / TUNING_FILE),
        "eval": latest_eval(root, version),
    }


def tuning_point(path: Path) -> dict[str, Any] | None:
    """The knobs a load applies and what the sweep measured at them; None without a profile."""
    if not path.exists():
        return None
    profile = tuning.load_profile(path)
    return {
        "active": tuning.active_params(profile),
        "overrides": profile.get("overrides") or {},
        "param_str": profile.get("param_str", ""),
        **{key: profile.get(key) for key in ("k", "recall_at_k", "latency_ms", "qps", "mode", "profile_at")},
    }


def chunk_churn(old_catalog: Path, new_catalog: Path) -> dict[str, Any]:
    """`chunks` (counts) and `files` (paths added, removed, changed; a count of unchanged) between catalogs."""
    for path in (old_catalog, new_catalog):
        if not path.is_file():
            raise NotFoundError(f"DuckDB catalog not found: {path}")
    with duckdb.connect() as con:
        for alias, path in zip(_SIDES, (old_catalog, new_catalog), strict=True):
            quoted = str(path).replace("'", "''")
            try:
                con.execute(f"ATTACH '{quoted}' AS {alias}_v (READ_ONLY)")
            except duckdb.Error as exc:
                raise catalog.open_error(path, exc) from None
        digest = _content_expr(con)
        for alias in _SIDES:
            con.execute(f"CREATE TEMP VIEW {alias}_c AS SELECT chunk_id, uri, {digest} AS digest FROM {alias}_v.chunks")
        counts = con.execute(
            """SELECT
                 (SELECT count(*) FROM old_c), (SELECT count(*) FROM new_c),
                 count(*) FILTER (WHERE o.chunk_id IS NULL),
                 count(*) FILTER (WHERE n.chunk_id IS NULL),
                 count(*) FILTER (WHERE o.digest <> n.digest),
                 count(*) FILTER (WHERE o.digest = n.digest),
                 (SELECT count(*) FROM new_c n ANTI JOIN old_c o ON o.uri = n.uri AND o.digest = n.digest)
               FROM old_c o FULL OUTER JOIN new_c n ON o.chunk_id = n.chunk_id"""
        ).fetchone()
        files = con.execute(
            """WITH fo AS (SELECT uri, md5(string_agg(chunk_id || ':' || digest, ',' ORDER BY chunk_id)) AS sig
                           FROM old_c GROUP BY uri),
                    fn AS (SELECT uri, md5(string_agg(chunk_id || ':' || digest, ',' ORDER BY chunk_id)) AS sig
                           FROM new_c GROUP BY uri)
               SELECT coalesce(fo.uri, fn.uri),
                      CASE WHEN fo.uri IS NULL THEN 'added' WHEN fn.uri IS NULL THEN 'removed'
                           WHEN fo.sig <> fn.sig THEN 'changed' ELSE 'unchanged' END
               FROM fo FULL OUTER JOIN fn ON fo.uri = fn.uri ORDER BY 1"""
        ).fetchall()
    keys = ("old", "new", "added", "removed", "changed", "unchanged", "new_texts")
    by_state: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": []}
    for uri, state in files:
        by_state[state].append(uri)
    return {
        "chunks": dict(zip(keys, counts, strict=True)),
        "files": {**{k: v for k, v in by_state.items() if k != "unchanged"}, "unchanged": len(by_state["unchanged"])},
    }


def _content_expr(con: duckdb.DuckDBPyConnection) -> str:
    """The stored content hash when both catalogs have one, else an md5 of the chunk text (staged catalogs)."""
    have = [
        {
            r[0]
            for r in con.execute(
                f"SELECT column_name FROM duckdb_columns() WHERE database_name = '{alias}_v' AND table_name = 'chunks'"
            ).fetchall()
        }
        for alias in _SIDES
    ]
    if not all(have):
        raise ValidationError("a catalog has no chunks table; nothing to compare")
    if all("content_hash" in columns for columns in have):
        return "content_hash"
    if all("text" in columns for columns in have):
        return "md5(text)"
    raise ValidationError("the catalogs share neither content_hash nor text columns; chunk content cannot be compared")
