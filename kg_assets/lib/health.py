"""Health of a complete version: its files against the manifest, and whether index, ID map, catalog, views,
tuning profile and the `current` pointer still agree. Reads only: no lock, no repair, DuckDB opened read-only.

Every check runs even when an earlier one failed, so one report names every problem. A check is `ok`,
`failed`, `skipped` (what it checks is absent from this version, e.g. a catalog staged without views), or
`degraded` (the version works, with less than it could have: a SCIP indexer that failed); only `failed` fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import faiss
import numpy as np

from kg_assets.lib import catalog, faiss_index, progressive, scip, tuning, validation
from kg_assets.lib.embedding import searchable_embedder
from kg_assets.lib.errors import KgError, ValidationError
from kg_assets.lib.lexical import LEXICAL_FILE, LexicalIndex
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, SCIP_FILE, LifecycleRoot
from kg_assets.lib.tuning import TUNING_FILE

OK, FAILED, SKIPPED, DEGRADED = "ok", "failed", "skipped", "degraded"
MAX_FOREIGN_SCIP_SHARE = 0.5  # above it, index.scip describes another repository than the catalog
# What a check may run into on a damaged version; anything else is a bug and propagates.
_DAMAGE = (KgError, duckdb.Error, RuntimeError, OSError, ValueError, KeyError)


@dataclass(frozen=True)
class HealthCheck:
    name: str
    status: str  # ok | failed | skipped | degraded
    detail: str


@dataclass(frozen=True)
class HealthReport:
    root: str
    version: str
    current: str | None
    checks: list[HealthCheck]

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    def failures(self) -> list[HealthCheck]:
        return [c for c in self.checks if c.status == FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class _Version:
    """One version's files, each read at most once and only when a check needs it; `vdir` is the staging
    directory of a version being sealed (no manifest yet), else the complete version's directory."""

    def __init__(self, root: LifecycleRoot, version: str, vdir: Path | None = None) -> None:
        self.root = root
        self.version = version
        self.sealed = vdir is None
        self.vdir = vdir or root.version_dir(version)

    @cached_property
    def manifest(self) -> dict[str, Any]:
        return self.root.read_manifest(self.version) if self.sealed else {}

    @cached_property
    def index(self) -> faiss.Index:
        return faiss_index.read_index(self.vdir / FAISS_FILE)

    @cached_property
    def index_ids(self) -> np.ndarray:
        return faiss_index.external_ids(self.index)


def _files_match_manifest(v: _Version) -> tuple[str, str]:
    manifest = v.root.verify_version(v.version)
    files = manifest.get("files", {})
    mutable = sum(1 for entry in files.values() if entry.get("mutable"))
    return OK, f"{len(files) - mutable} immutable files match their sha256, {mutable} mutable sidecar(s) parse"


def _artifacts_agree(v: _Version) -> tuple[str, str]:
    """Dimension, ntotal, ID map and catalog agree now (validate_artifacts), and as the manifest recorded."""
    attrs = validation.validate_artifacts(v.vdir)
    drift = _differences(v.manifest.get("attrs", {}), attrs)
    meta_dim = catalog.read_meta(v.vdir / CATALOG_FILE).get("embedder_dim")
    if meta_dim is not None and int(meta_dim) != attrs["faiss_dim"]:
        drift.append(f"kg_meta embedder_dim {meta_dim} but the index has dimension {attrs['faiss_dim']}")
    if drift:
        return FAILED, "; ".join(drift)
    parts = [f"dim {attrs['faiss_dim']}", f"{attrs['faiss_ntotal']} vectors ({attrs['faiss_factory']})"]
    labels = (("chunk_count", "chunks"), ("idmap_rows", "ID-map rows"))
    parts += [f"{attrs[key]} {label}" for key, label in labels if key in attrs]
    return OK, ", ".join(parts) + f", SCIP {attrs.get('scip_documents', 0)} documents"


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: recorded X, now Y` for every key both have with different values."""
    return [
        f"{k}: recorded {recorded[k]!r}, now {value!r}" for k, value in now.items() if recorded.get(k, value) != value
    ]


def _idmap_views_resolve(v: _Version) -> tuple[str, str]:
    """`faiss_idmap` maps every FAISS row, in order, to the index's own id; `v_faiss_join` joins each to a chunk."""
    with catalog.connect_read_only(v.vdir / CATALOG_FILE) as con:
        missing = {"faiss_idmap", "v_faiss_join"} - catalog.table_names(con)
        if missing:
            return SKIPPED, f"catalog has no {', '.join(sorted(missing))} (refresh with indexctl materialize-join)"
        mapped = con.execute("SELECT faiss_row, external_id FROM faiss_idmap ORDER BY faiss_row").fetchnumpy()
        joined = con.execute(
            "SELECT count(*), count(DISTINCT chunk_id), min(faiss_row), max(faiss_row) FROM v_faiss_join"
        ).fetchone()
    n = v.index.ntotal
    if not np.array_equal(mapped["faiss_row"], np.arange(n)):
        return FAILED, f"faiss_idmap has {len(mapped['faiss_row'])} rows, not exactly the FAISS rows 0..{n - 1}"
    if not np.array_equal(mapped["external_id"], v.index_ids):
        return FAILED, "faiss_idmap external_id values differ from the FAISS index's ids"
    if tuple(joined) != (n, n, 0 if n else None, n - 1 if n else None):
        return FAILED, f"v_faiss_join has {joined[0]} rows ({joined[1]} distinct chunks) for {n} FAISS rows"
    return OK, f"faiss_idmap and v_faiss_join resolve all {n} FAISS rows to distinct chunks"


def _chunk_symbols_resolve(v: _Version) -> tuple[str, str]:
    with catalog.connect_read_only(v.vdir / CATALOG_FILE) as con:
        if "v_chunk_symbols" not in catalog.table_names(con):
            return SKIPPED, "catalog has no v_chunk_symbols"
        rows, chunks, orphans = con.execute(
            "SELECT count(*), count(DISTINCT s.chunk_id), count(*) FILTER (WHERE c.chunk_id IS NULL) "
            "FROM v_chunk_symbols s LEFT JOIN chunks c USING (chunk_id)"
        ).fetchone()
    if orphans:
        return FAILED, f"{orphans} of {rows} v_chunk_symbols rows name no chunk"
    return OK, f"{rows} symbol definitions inside {chunks} chunks"


def _scip_matches_catalog(v: _Version) -> tuple[str, str]:
    """`index.scip` describes this version's repository: most of its documents with occurrences are files the
    catalog holds. Not all: an indexer may see a file the chunker left no chunk of (an empty `__init__.py`)."""
    documents = {doc.relative_path for doc in scip.read_index(v.vdir / SCIP_FILE).documents if doc.occurrences}
    if not documents:
        return SKIPPED, f"{SCIP_FILE} has no documents with occurrences"
    with catalog.connect_read_only(v.vdir / CATALOG_FILE) as con:
        if "chunks" not in catalog.table_names(con):
            return SKIPPED, "catalog has no chunks table"
        uris = {row[0] for row in con.execute("SELECT DISTINCT uri FROM chunks").fetchall()}
    foreign = sorted(documents - uris)
    if len(foreign) > len(documents) * MAX_FOREIGN_SCIP_SHARE:
        return FAILED, (
            f"{SCIP_FILE} was made from another repository: {len(foreign)} of its {len(documents)} documents are "
            f"no file of the catalog (e.g. {foreign[0]!r})"
        )
    return OK, f"{len(documents) - len(foreign)} of {len(documents)} SCIP documents are files of the catalog"


def _tuning_fits_index(v: _Version) -> tuple[str, str]:
    path = v.vdir / TUNING_FILE
    if not path.exists():
        return OK, "no tuning.json: the index runs with the knobs it was built with"
    profile = tuning.load_profile(path)
    factory = faiss_index.factory_string(v.index)
    drift = _differences(profile, {"factory": factory, "ntotal": v.index.ntotal})
    if drift:
        return FAILED, "tuning.json was measured on another index: " + "; ".join(drift)
    applied = tuning.apply_profile(v.index, profile)
    ignored = sorted(set(tuning.active_params(profile)) - set(applied))
    detail = f"applies {tuning.param_string(applied) or 'no FAISS knobs'}"
    if "k_factor" in applied:
        detail += f", k_factor={applied['k_factor']:g}"
    if profile.get("recall_at_k") is not None:
        detail += f" (measured recall@{profile.get('k')} {profile['recall_at_k']})"
    if ignored:
        detail += f"; ignores {', '.join(ignored)} (not knobs of {factory})"
    return OK, detail


def _searchable(v: _Version) -> tuple[str, str]:
    """A text query can be embedded for this version: an embedder is recorded, installed, and of the index's
    dimension (`searchable_embedder`, what search checks)."""
    embedder = searchable_embedder(catalog.read_meta(v.vdir / CATALOG_FILE), v.index.d, v.version)
    return OK, f"queries are embedded with {embedder.name} (dimension {embedder.dim}, the index's)"


def _lexical_index_fits(v: _Version) -> tuple[str, str]:
    """The lexical index loads and indexes exactly the index's chunk ids (search's lexical channel)."""
    if not (v.vdir / LEXICAL_FILE).is_file():
        return SKIPPED, f"no {LEXICAL_FILE}: search uses the dense and symbol channels only"
    lexical = LexicalIndex.load(v.vdir / LEXICAL_FILE)
    if not np.array_equal(np.sort(lexical.ids), np.sort(v.index_ids)):
        return FAILED, f"{LEXICAL_FILE} indexes other chunk ids than {FAISS_FILE}"
    return OK, f"{len(lexical.ids)} chunks, {lexical.terms} terms, the index's chunk ids"


def _scip_indexers_complete(v: _Version) -> tuple[str, str]:
    """Every SCIP indexer the build ran gave its languages' data: one found on the PATH that failed (or indexed
    none of its files) leaves them without references, a degradation named here (a bundled one fails the build)."""
    meta = catalog.read_meta(v.vdir / CATALOG_FILE)
    if "scip_failed" not in meta:
        return SKIPPED, "the catalog records no SCIP indexer outcomes (built before they were recorded)"
    failed = json.loads(meta["scip_failed"])
    if failed:
        named = "; ".join(f"{name}: {error}" for name, error in sorted(failed.items()))
        return DEGRADED, f"no SCIP data for the languages of {named}"
    ran = ", ".join(sorted(json.loads(meta.get("scip_indexers", "{}")))) or "none"
    return OK, f"every SCIP indexer that ran gave its data ({ran})"


def _pointer_consistent(v: _Version) -> tuple[str, str]:
    current = v.root.trusted_current()  # a complete version, in agreement with the history
    if current is None:
        return SKIPPED, "nothing is published"
    link = v.root.current_link
    target = os.readlink(link) if link.is_symlink() else None
    if target != os.path.join("versions", current):
        return FAILED, (
            f"CURRENT is {current} but the current link points at {target or 'nothing'}; "
            f"`indexctl publish {current}` repairs it"
        )
    return OK, f"CURRENT and the current link both name {current}"


def _kind(v: _Version) -> tuple[str, str]:
    """Which kind of version this is (lib/progressive.py); for a fast one, where its full version stands."""
    if not v.sealed:
        return SKIPPED, "not sealed yet"
    kind, full = progressive.version_kind(v.root, v.version)
    if kind == "full":
        return OK, "full version"
    return OK, "fast version (static embedder, no SCIP)" + (
        f"; {progressive.full_version_state(v.root, full)}" if full else ""
    )


CHECKS: dict[str, Callable[[_Version], tuple[str, str]]] = {
    "kind": _kind,
    "files_match_manifest": _files_match_manifest,
    "artifacts_agree": _artifacts_agree,
    "idmap_views_resolve": _idmap_views_resolve,
    "chunk_symbols_resolve": _chunk_symbols_resolve,
    "scip_matches_catalog": _scip_matches_catalog,
    "tuning_fits_index": _tuning_fits_index,
    "searchable": _searchable,
    "lexical_index_fits": _lexical_index_fits,
    "scip_indexers_complete": _scip_indexers_complete,
    "pointer_consistent": _pointer_consistent,
}


# Checks that are not about the artifacts themselves: the version's kind, the manifest's hashes (verified on
# their own at publish), the root's pointer, an embedder installed on this machine.
_NOT_ARTIFACT_CHECKS = frozenset({"kind", "files_match_manifest", "searchable", "pointer_consistent"})


def version_health(root: LifecycleRoot, version: str | None = None) -> HealthReport:
    """Run every check on `version` (default: the current one, ValidationError when `CURRENT` cannot be trusted);
    NotFoundError when there is no such version."""
    if version is None:
        root.trusted_current()
    version = root.resolve_version(version)
    checks = _run(_Version(root, version), CHECKS)
    return HealthReport(str(root.root), version, root.current(), checks)


def check_artifacts(root: LifecycleRoot, version: str, staging: Path | None = None) -> None:
    """ValidationError naming every failed artifact check of `version` (or of `staging`, the directory about to
    be sealed as it): the checks `health` runs, so stage and build seal, and publish accepts, only what health
    passes."""
    names = [name for name in CHECKS if name not in _NOT_ARTIFACT_CHECKS]
    failed = [c for c in _run(_Version(root, version, staging), names) if c.status == FAILED]
    if failed:
        raise ValidationError("; ".join(f"{c.name} failed: {c.detail}" for c in failed))


def _run(subject: _Version, names: Iterable[str]) -> list[HealthCheck]:
    checks = []
    for name in names:
        try:
            status, detail = CHECKS[name](subject)
        except _DAMAGE as exc:
            status, detail = FAILED, (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        checks.append(HealthCheck(name, status, detail))
    return checks
