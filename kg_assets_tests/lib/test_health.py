"""Version health on real artifacts: a good version passes, each kind of damage fails its own check, and
checking never writes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest

from kg_assets.lib.catalog import read_meta
from kg_assets.lib.embedding import searchable_embedder
from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.health import CHECKS, DEGRADED, FAILED, OK, SKIPPED, version_health
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import published_state


def statuses(root: LifecycleRoot, version: str | None = None) -> dict[str, str]:
    return {c.name: c.status for c in version_health(root, version).checks}


DUCKDB_HEADERS = 3 * 4096  # a DuckDB file's header blocks; checksummed data blocks follow


def flip_bytes(path: Path, offset: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_built_version_passes_every_check_including_the_views(built_pair: LifecycleRoot) -> None:
    report = version_health(built_pair, "v2")
    assert report.ok and report.current is None
    assert {c.name: c.status for c in report.checks} == {
        "kind": OK,
        "files_match_manifest": OK,
        "artifacts_agree": OK,
        "idmap_views_resolve": OK,
        "chunk_symbols_resolve": OK,
        "scip_matches_catalog": OK,
        "tuning_fits_index": OK,
        "searchable": OK,
        "lexical_index_fits": OK,
        "scip_indexers_complete": OK,
        "pointer_consistent": SKIPPED,  # nothing published in this root
    }
    detail = {c.name: c.detail for c in report.checks}
    ntotal = built_pair.read_manifest("v2")["attrs"]["faiss_ntotal"]
    assert f"resolve all {ntotal} FAISS rows" in detail["idmap_views_resolve"]


def test_staged_version_without_views_is_healthy_with_those_checks_skipped(sample_versions: LifecycleRoot) -> None:
    report = version_health(sample_versions)
    assert report.ok and report.version == "v1" == report.current
    checks = {c.name: c.status for c in report.checks}
    assert checks["idmap_views_resolve"] == checks["chunk_symbols_resolve"] == SKIPPED
    assert checks["pointer_consistent"] == OK


def test_corrupted_index_fails_the_manifest_check_and_the_other_checks_still_run(
    sample_versions: LifecycleRoot,
) -> None:
    path = sample_versions.version_dir("v2") / "faiss.index"
    flip_bytes(path, path.stat().st_size // 2)
    report = version_health(sample_versions, "v2")
    assert not report.ok
    (failure,) = report.failures()
    assert failure.name == "files_match_manifest" and "faiss.index does not match its manifest sha256" in failure.detail
    assert len(report.checks) == len(CHECKS)


def test_corrupted_catalog_fails_every_check_that_reads_it(sample_versions: LifecycleRoot) -> None:
    path = sample_versions.version_dir("v1") / "catalog.duckdb"
    flip_bytes(path, DUCKDB_HEADERS, path.stat().st_size - DUCKDB_HEADERS)  # every data block
    checks = statuses(sample_versions)
    assert checks["files_match_manifest"] == checks["artifacts_agree"] == FAILED
    assert checks["tuning_fits_index"] == checks["pointer_consistent"] == OK


def test_views_that_disagree_with_the_index_fail(built_pair: LifecycleRoot, tmp_path: Path) -> None:
    copy = LifecycleRoot(tmp_path / "indexes")
    shutil.copytree(built_pair.version_dir("v1"), copy.version_dir("v1"))
    with duckdb.connect(str(copy.version_dir("v1") / "catalog.duckdb")) as con:
        shifted = "SELECT faiss_row, external_id + 1 AS external_id FROM faiss_idmap_mat"
        con.execute(f"CREATE OR REPLACE VIEW faiss_idmap AS {shifted}")
    report = version_health(copy, "v1")
    views = next(c for c in report.checks if c.name == "idmap_views_resolve")
    assert views.status == FAILED and "differ from the FAISS index's ids" in views.detail


def test_a_scip_indexer_that_failed_is_a_named_degradation_not_a_failure(
    built_pair: LifecycleRoot, tmp_path: Path
) -> None:
    copy = LifecycleRoot(tmp_path / "indexes")
    shutil.copytree(built_pair.version_dir("v1"), copy.version_dir("v1"))
    failed = {"rust-analyzer": "rust-analyzer failed with exit code 1: error: Unknown binary 'rust-analyzer'"}
    with duckdb.connect(str(copy.version_dir("v1") / "catalog.duckdb")) as con:
        con.execute("UPDATE kg_meta SET value = ? WHERE key = 'scip_failed'", [json.dumps(failed)])
    report = version_health(copy, "v1")
    check = next(c for c in report.checks if c.name == "scip_indexers_complete")
    assert check.status == DEGRADED and check not in report.failures()
    assert check.detail == f"no SCIP data for the languages of rust-analyzer: {failed['rust-analyzer']}"


def test_tuning_profile_measured_on_another_index_fails(sample_versions: LifecycleRoot) -> None:
    path = sample_versions.version_dir("v1") / "tuning.json"
    path.write_text(json.dumps({"nprobe": 4, "factory": "HNSW32", "ntotal": 500}))
    checks = version_health(sample_versions).checks
    tuning = next(c for c in checks if c.name == "tuning_fits_index")
    assert tuning.status == FAILED and "factory: recorded 'HNSW32', now 'IVF8,Flat'" in tuning.detail
    assert next(c for c in checks if c.name == "files_match_manifest").status == OK  # a mutable sidecar


@pytest.mark.parametrize(
    ("meta", "missing"),
    [
        (None, "its catalog has no kg_meta, so it records no embedder"),
        ([("embedder", "sample")], "its kg_meta records no embedder (embedder_spec)"),
        ([("embedder_spec", "http://127.0.0.1:9#other#64")], "gives dimension 64, its index has 32"),
    ],
)
def test_a_version_search_cannot_embed_queries_for_is_not_searchable(
    samples: dict, tmp_path: Path, meta: list[tuple[str, str]] | None, missing: str
) -> None:
    catalog = tmp_path / "catalog.duckdb"
    shutil.copy(samples["a"]["duckdb"], catalog)
    with duckdb.connect(str(catalog)) as con:
        con.execute("DROP TABLE kg_meta")
        if meta is not None:
            con.execute("CREATE TABLE kg_meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
            con.executemany("INSERT INTO kg_meta VALUES (?, ?)", meta)
    root = LifecycleRoot(tmp_path / "indexes")
    root.stage("v1", samples["a"]["faiss"], catalog, samples["a"]["scip"])
    checks = {c.name: c for c in version_health(root, "v1").checks}
    assert checks["searchable"].status == FAILED and missing in checks["searchable"].detail
    with pytest.raises(ValidationError, match="cannot be searched"):
        searchable_embedder(read_meta(root.version_dir("v1") / "catalog.duckdb"), 32, "v1")


def test_lagging_current_link_fails_and_is_left_as_found(sample_versions: LifecycleRoot) -> None:
    link = sample_versions.current_link
    link.unlink()
    os.symlink(os.path.join("versions", "v2"), link)
    before = published_state(sample_versions)
    checks = {c.name: c for c in version_health(sample_versions, "v2").checks}
    assert checks["pointer_consistent"].status == FAILED
    assert "`indexctl publish v1` repairs it" in checks["pointer_consistent"].detail
    assert published_state(sample_versions) == before


def test_checking_writes_nothing(sample_versions: LifecycleRoot) -> None:
    flip_bytes(sample_versions.version_dir("v2") / "catalog.duckdb", 20_000)
    before = published_state(sample_versions)
    listing = sorted(p.relative_to(sample_versions.root) for p in sample_versions.root.rglob("*"))
    for version in ("v1", "v2"):
        version_health(sample_versions, version)
    assert published_state(sample_versions) == before
    assert sorted(p.relative_to(sample_versions.root) for p in sample_versions.root.rglob("*")) == listing


def test_unknown_version_is_not_found(sample_versions: LifecycleRoot) -> None:
    with pytest.raises(NotFoundError, match="unknown version v9"):
        version_health(sample_versions, "v9")


def test_a_lexical_index_of_other_chunks_is_refused_at_stage_and_fails_health(
    sample_versions: LifecycleRoot, samples: dict, tmp_path: Path
) -> None:
    import numpy as np

    from kg_assets.lib.errors import ValidationError
    from kg_assets.lib.lexical import LEXICAL_FILE, LexicalIndex

    LexicalIndex.build(np.array([1, 2, 3]), [["alpha"], ["beta"], ["gamma"]]).save(tmp_path / LEXICAL_FILE)
    sample = samples["a"]
    with pytest.raises(ValidationError, match="other chunk ids"):
        sample_versions.stage(
            "v3", sample["faiss"], sample["duckdb"], sample["scip"], extras={LEXICAL_FILE: tmp_path / LEXICAL_FILE}
        )
    (sample_versions.version_dir("v1") / LEXICAL_FILE).write_bytes((tmp_path / LEXICAL_FILE).read_bytes())
    checks = {c.name: c for c in version_health(sample_versions, "v1").checks}
    assert checks["lexical_index_fits"].status == FAILED
    assert "other chunk ids" in checks["lexical_index_fits"].detail
