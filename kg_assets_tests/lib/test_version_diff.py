"""Diffs between real versions: a planted one-file change in the sample repository shows up as exactly that."""

from __future__ import annotations

import pytest

from kg_assets.lib import catalog
from kg_assets.lib.errors import NotFoundError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.version_diff import diff_versions
from kg_assets_tests.conftest import PLANTED_FILE, stage_sample


def chunk_rows(root: LifecycleRoot, version: str) -> dict[int, tuple[str, str]]:
    """chunk_id -> (uri, content hash), read straight from the catalog."""
    with catalog.connect_read_only(root.version_dir(version) / "catalog.duckdb") as con:
        rows = con.execute("SELECT chunk_id, uri, content_hash FROM chunks").fetchall()
    return {chunk_id: (uri, digest) for chunk_id, uri, digest in rows}


def test_planted_change_in_one_file_is_reported_as_exactly_that(built_pair: LifecycleRoot) -> None:
    diff = diff_versions(built_pair, "v1", "v2")
    old, new = chunk_rows(built_pair, "v1"), chunk_rows(built_pair, "v2")
    added, removed = new.keys() - old.keys(), old.keys() - new.keys()
    changed = {i for i in old.keys() & new.keys() if old[i] != new[i]}
    assert added or changed
    assert {new[i][0] for i in added} | {old[i][0] for i in removed | changed} == {PLANTED_FILE}
    assert diff["chunks"] == {
        "old": len(old),
        "new": len(new),
        "added": len(added),
        "removed": len(removed),
        "changed": len(changed),
        "unchanged": len(old.keys() & new.keys()) - len(changed),
        "new_texts": len(set(new.values()) - set(old.values())),
    }
    files = {uri for uri, _ in old.values()}
    assert diff["files"] == {"added": [], "removed": [], "changed": [PLANTED_FILE], "unchanged": len(files) - 1}
    for side, version in (("old", "v1"), ("new", "v2")):
        summary = diff[side]
        assert (summary["version"], summary["factory"], summary["ntotal"]) == (
            version,
            "Flat",
            len(chunk_rows(built_pair, version)),
        )
        assert summary["tuning"] is None and summary["eval"] is None
    assert diff["same_embedder"] is True


def test_a_version_against_itself_has_no_churn(built_pair: LifecycleRoot) -> None:
    diff = diff_versions(built_pair, "v2", "v2")
    n = diff["chunks"]["old"]
    assert diff["chunks"] == {
        "old": n,
        "new": n,
        "added": 0,
        "removed": 0,
        "changed": 0,
        "unchanged": n,
        "new_texts": 0,
    }
    assert diff["files"]["changed"] == [] and diff["files"]["unchanged"] == 6


def test_staged_catalogs_without_content_hashes_compare_by_text(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "a", samples["a"])
    stage_sample(root, "b", samples["b"])
    diff = diff_versions(root, "a", "b")
    # The two samples hold the same texts under different random chunk ids.
    assert (diff["chunks"]["added"], diff["chunks"]["removed"], diff["chunks"]["new_texts"]) == (500, 500, 0)
    assert diff["old"]["tuning"]["active"] == {"nprobe": 4, "k_factor": 1.0}
    assert diff["same_embedder"] is None  # the samples record no embedder fingerprint


def test_unknown_version_is_not_found(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "a", samples["a"])
    with pytest.raises(NotFoundError, match="unknown version nope"):
        diff_versions(root, "a", "nope")
