"""Reader leases: a version a reader holds is never removed by gc, which reports it; gc's own hold blocks readers."""

from __future__ import annotations

import os

import pytest

from kg_assets.lib.errors import ConflictError, NotFoundError
from kg_assets.lib.fsutil import try_flock
from kg_assets.lib.lifecycle import LifecycleRoot


def test_gc_keeps_and_reports_a_leased_version(sample_versions: LifecycleRoot) -> None:
    root = sample_versions
    with root.reader_lease("v2"):
        planned = root.gc(0, dry_run=True)
        assert (planned.removed_versions, planned.in_use) == ([], ["v2"])
        report = root.gc(0)
        assert (report.removed_versions, report.in_use) == ([], ["v2"])
        assert sorted(report.kept) == ["v1", "v2"]
        root.verify_version("v2")
    report = root.gc(0)
    assert (report.removed_versions, report.in_use) == (["v2"], [])
    assert not root.version_dir("v2").exists()
    assert not root.lease_path("v2").exists()


def test_a_lease_on_a_removed_version_is_refused(sample_versions: LifecycleRoot) -> None:
    sample_versions.gc(0)
    with pytest.raises(NotFoundError, match="unknown version v2"), sample_versions.reader_lease("v2"):
        pass


def test_a_reader_waits_for_gc_and_gives_up_with_a_conflict(sample_versions: LifecycleRoot) -> None:
    sample_versions.lease_path("v2").parent.mkdir(parents=True, exist_ok=True)
    held = try_flock(sample_versions.lease_path("v2"), shared=False)  # what gc holds while it moves v2 away
    assert held is not None
    try:
        with pytest.raises(ConflictError, match="gc holds"), sample_versions.reader_lease("v2", timeout=0.2):
            pass
    finally:
        os.close(held)
    with sample_versions.reader_lease("v2"), sample_versions.reader_lease("v2"):  # shared: readers coexist
        assert try_flock(sample_versions.lease_path("v2"), shared=False) is None
