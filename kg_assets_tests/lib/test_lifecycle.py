"""The lifecycle engine on small real FAISS, DuckDB and SCIP files."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from kg_assets.lib import lifecycle
from kg_assets.lib.errors import ConflictError, NotFoundError, UsageError, ValidationError
from kg_assets.lib.fsutil import exclusive_lock, sha256_file
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import published_state, stage_sample
from kg_assets_tests.sample_artifacts import write_sample


def test_round_trip_stage_publish_rollback_status_ls_gc(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    assert root.current() is None
    assert [(i.version, i.state) for i in root.status()] == [("v1", "staged"), ("v2", "staged")]

    flip = root.publish("v1")
    assert (flip.from_version, flip.to_version, flip.changed) == (None, "v1", True)
    assert root.publish("v2").from_version == "v1"
    assert root.rollback("v1").from_version == "v2"
    assert root.current() == "v1"
    assert os.readlink(root.current_link) == "versions/v1"
    assert (root.current_link / "faiss.index").is_file()
    assert [(i.version, i.state) for i in root.status()] == [("v1", "current"), ("v2", "published")]
    assert [e["action"] for e in root.history()] == ["publish", "publish", "rollback"]
    assert root.list_versions() == ["v1", "v2"]

    stage_sample(root, "v3", samples["a"])
    report = root.gc(keep=0)
    # v1 is current and v2 is the version it replaced: both survive even with --keep 0.
    assert report.removed_versions == ["v3"]
    assert root.list_versions() == ["v1", "v2"]


def test_manifest_records_hashes_sizes_and_summary(root: LifecycleRoot, samples: dict) -> None:
    vdir = stage_sample(root, "v1", samples["a"])
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "faiss.index",
        "catalog.duckdb",
        "index.scip",
        "faiss_idmap.parquet",
        "tuning.json",
    }
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(vdir / name)
        assert entry["size"] == (vdir / name).stat().st_size
        assert entry["mutable"] == (name == "tuning.json")
    attrs = manifest["attrs"]
    assert (attrs["faiss_dim"], attrs["faiss_ntotal"], attrs["faiss_factory"]) == (32, 500, "IVF8,Flat")
    assert (attrs["chunk_count"], attrs["embedder_dim"], attrs["embedder_name"]) == (500, 32, "sample-clustered")
    assert attrs["idmap_rows"] == 500
    assert attrs["scip_documents"] == 7
    assert manifest["sources"]["faiss.index"] == str(samples["a"]["faiss"])


def test_ls_sorts_versions_naturally(root: LifecycleRoot, samples: dict) -> None:
    for version in ("v10", "v2", "v1"):
        root.stage(version, samples["a"]["faiss"], samples["a"]["duckdb"], samples["a"]["scip"])
    assert root.list_versions() == ["v1", "v2", "v10"]


def test_publish_is_idempotent(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    root.publish("v1")
    before = published_state(root)
    flip = root.publish("v1")
    assert not flip.changed
    assert published_state(root) == before


def test_stale_compare_and_swap_is_a_conflict(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    root.publish("v1", expect_current=None)
    before = published_state(root)
    with pytest.raises(ConflictError, match="CURRENT is v1, expected <none>"):
        root.publish("v2", expect_current=None)
    assert published_state(root) == before
    assert root.publish("v2", expect_current="v1").changed


def test_publish_refuses_a_tampered_version(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    vdir = stage_sample(root, "v2", samples["b"])
    root.publish("v1")
    before = published_state(root)
    data = bytearray((vdir / "index.scip").read_bytes())
    data[-1] ^= 0xFF
    (vdir / "index.scip").write_bytes(bytes(data))
    with pytest.raises(ValidationError, match=r"index\.scip does not match its manifest sha256"):
        root.publish("v2")
    with pytest.raises(ValidationError):
        root.rollback("v2")
    (vdir / "faiss.index").unlink()
    assert {i.version: i.state for i in root.status()}["v2"] == "broken"
    assert published_state(root)["current"] == before["current"]


def test_tuning_profile_is_the_mutable_sidecar(root: LifecycleRoot, samples: dict) -> None:
    vdir = stage_sample(root, "v1", samples["a"])
    (vdir / "tuning.json").write_text(json.dumps({"nprobe": 8}))
    root.publish("v1")  # a re-tuned profile does not break the manifest
    (vdir / "tuning.json").write_text("{not json")
    with pytest.raises(ValidationError, match="not valid JSON"):
        root.verify_version("v1")


def test_staged_copies_are_independent_of_their_sources(root: LifecycleRoot, tmp_path: Path) -> None:
    sample = write_sample(tmp_path / "src", n=300)
    vdir = stage_sample(root, "v1", sample)
    assert (vdir / "faiss.index").stat().st_ino != sample["faiss"].stat().st_ino
    with open(sample["faiss"], "r+b") as fh:  # rewrite the source in place
        fh.write(b"\0" * 64)
    root.verify_version("v1")


def test_stage_refuses_existing_version_and_running_stage(root: LifecycleRoot, samples: dict) -> None:
    a = samples["a"]
    stage_sample(root, "v1", a)
    with pytest.raises(ConflictError, match="already exists"):
        root.stage("v1", a["faiss"], a["duckdb"], a["scip"])
    with exclusive_lock(root.root / ".locks" / "v2.lock", 0, "test"), pytest.raises(ConflictError, match="busy"):
        root.stage("v2", a["faiss"], a["duckdb"], a["scip"])


def test_abandoned_staging_is_reclaimed_by_the_next_stage(root: LifecycleRoot, samples: dict) -> None:
    stale = root.staging_dir("v1")
    stale.mkdir(parents=True)
    (stale / "faiss.index").write_bytes(b"half a file")
    assert [(i.version, i.state) for i in root.status()] == [("v1.staging", "staging")]
    with pytest.raises(NotFoundError, match="still staging"):
        root.publish("v1")
    stage_sample(root, "v1", samples["a"])
    assert not stale.exists()
    root.verify_version("v1")


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        ("truncate_faiss", ValidationError, "not a readable FAISS index"),
        ("short_idmap", ValidationError, "ID map has 499 rows but the FAISS index has 500"),
        ("garbage_tuning", ValidationError, "not valid JSON"),
        ("bad_knob", ValidationError, "nprobe must be a finite positive int"),
        ("not_duckdb", ValidationError, "not a readable DuckDB database"),
        ("not_scip", ValidationError, "not a SCIP index"),
        ("missing_scip", NotFoundError, "input for index.scip not found"),
        ("wrong_catalog", ValidationError, "catalog has 400 chunks but the FAISS index has 500"),
    ],
)
def test_bad_artifacts_are_refused_and_leave_the_root_intact(
    root: LifecycleRoot, samples: dict, tmp_path: Path, damage: str, error: type, message: str
) -> None:
    stage_sample(root, "v1", samples["a"])
    root.publish("v1")
    before = published_state(root)
    bad = {kind: tmp_path / "bad" / path.name for kind, path in samples["b"].items()}
    shutil.copytree(samples["b"]["faiss"].parent, tmp_path / "bad")
    if damage == "truncate_faiss":
        bad["faiss"].write_bytes(bad["faiss"].read_bytes()[:1000])
    elif damage == "short_idmap":
        from kg_assets.lib import idmap

        table = idmap.read_idmap(bad["idmap"])
        idmap.write_idmap(table.slice(0, 499), bad["idmap"])
    elif damage == "garbage_tuning":
        bad["tuning"].write_text("nprobe=16 {")
    elif damage == "bad_knob":
        bad["tuning"].write_text(json.dumps({"nprobe": -3}))
    elif damage == "not_duckdb":
        bad["duckdb"].write_bytes(b"SQLite format 3\0" + b"\0" * 4000)
    elif damage == "not_scip":
        bad["scip"].write_bytes(os.urandom(300))
    elif damage == "missing_scip":
        bad["scip"].unlink()
    elif damage == "wrong_catalog":
        bad["duckdb"] = write_sample(tmp_path / "other", n=400)["duckdb"]
    with pytest.raises(error, match=message):
        stage_sample(root, "v2", bad)
    assert published_state(root) == before
    assert not root.staging_dir("v2").exists()


@pytest.mark.parametrize("version", ["", "../x", "a/b", "v1.staging", ".hidden", "v 1", "..", "v1;rm"])
def test_bad_version_ids_are_usage_errors(root: LifecycleRoot, samples: dict, version: str) -> None:
    a = samples["a"]
    with pytest.raises(UsageError):
        root.stage(version, a["faiss"], a["duckdb"], a["scip"])
    with pytest.raises(UsageError):
        root.publish(version)
    assert not root.root.exists()


def test_unknown_version_is_not_found(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    with pytest.raises(NotFoundError, match=r"unknown version v9 .*complete versions: v1"):
        root.rollback("v9")


def test_read_only_calls_create_nothing(tmp_path: Path) -> None:
    root = LifecycleRoot(tmp_path / "absent")
    assert root.status() == [] and root.list_versions() == [] and root.current() is None
    assert root.gc(keep=1).removed_versions == []
    assert not (tmp_path / "absent").exists()


def test_root_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KG_INDEXES_DIR", raising=False)
    monkeypatch.delenv("CODEINTEL_INDEXES_DIR", raising=False)
    assert lifecycle.resolve_root() == tmp_path / "indexes"
    monkeypatch.setenv("CODEINTEL_INDEXES_DIR", "/srv/legacy")
    assert lifecycle.resolve_root() == Path("/srv/legacy")
    monkeypatch.setenv("KG_INDEXES_DIR", "/srv/kg")
    assert lifecycle.resolve_root() == Path("/srv/kg")
    assert lifecycle.resolve_root("/explicit") == Path("/explicit")


def test_gc_keeps_newest_and_protects_current_and_previous(root: LifecycleRoot, samples: dict) -> None:
    for i in range(1, 6):
        stage_sample(root, f"v{i}", samples["a"])
    root.publish("v1")
    root.publish("v2")
    dry = root.gc(keep=1, dry_run=True)
    assert sorted(dry.removed_versions) == ["v3", "v4"]
    assert root.list_versions() == ["v1", "v2", "v3", "v4", "v5"]
    report = root.gc(keep=1)
    assert sorted(report.removed_versions) == ["v3", "v4"]
    assert root.list_versions() == ["v1", "v2", "v5"]
    assert not list(root.versions_dir.glob(".trash-*"))


def test_gc_removes_caches_and_eval_records_of_removed_versions_only(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    root.publish("v2")
    derived = {}
    for version in ("v1", "v2"):
        sha = root.read_manifest(version)["files"]["catalog.duckdb"]["sha256"]
        derived[version] = [
            root.root / ".cache" / "vectors" / sha / "ids.npy",
            root.root / ".cache" / "bm25" / sha / "chunk_ids.npy",
            root.root / ".cache" / "tuning" / f"{version}-0123abcd.npz",
            root.root / ".eval" / f"{version}.json",
        ]
        for path in derived[version]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    report = root.gc(keep=0)
    assert report.removed_versions == ["v1"] and len(report.removed_derived) == 4
    assert not any(p.exists() for p in derived["v1"][2:]) and not derived["v1"][0].parent.exists()
    assert all(p.exists() for p in derived["v2"])


def test_gc_removes_only_old_unlocked_staging(root: LifecycleRoot) -> None:
    root.versions_dir.mkdir(parents=True)
    (root.root / ".locks").mkdir()
    old, busy, young = (root.staging_dir(v) for v in ("old", "busy", "young"))
    for path in (old, busy, young):
        path.mkdir()
    hour_ago = time.time() - 3600
    for path in (old, busy):
        os.utime(path, (hour_ago, hour_ago))
    with exclusive_lock(root.root / ".locks" / "busy.lock", 0, "test"):
        report = root.gc(keep=5, staging_max_age_s=600)
    assert report.removed_staging == ["old.staging"]
    assert sorted(p.name for p in root.versions_dir.iterdir()) == ["busy.staging", "young.staging"]


def test_gc_removes_the_lock_files_of_removed_versions_but_not_held_ones(root: LifecycleRoot, samples: dict) -> None:
    """Issue 20 item 17: `.locks/` kept a staging lock (and reader lease file) of every version ever staged."""
    for version in ("v1", "v2", "v3"):
        stage_sample(root, version, samples["a"])
    root.publish("v1")
    with root.reader_lease("v1"), root.reader_lease("v3"):
        pass
    locks = root.root / ".locks"
    assert {p.name for p in locks.iterdir()} == {"v1.lock", "v2.lock", "v3.lock", "v1.read", "v3.read"}
    held = exclusive_lock(locks / "v9.lock", 0, "a stage of v9 about to create its staging directory")
    with held:
        assert root.gc(keep=0).removed_versions == ["v3", "v2"]
        assert {p.name for p in locks.iterdir()} == {"v1.lock", "v1.read", "v9.lock"}
    root.gc(keep=0)
    assert {p.name for p in locks.iterdir()} == {"v1.lock", "v1.read"}
    with root.staging_lock("v2"):  # the id can be staged again, under a new lock file
        assert (locks / "v2.lock").exists()


def test_crash_between_pointer_and_link_is_repaired(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    stage_sample(root, "v2", samples["b"])
    root.publish("v1")
    # A crash after CURRENT was renamed but before the link moved leaves them apart (the flip's record written).
    history = json.loads(root.history_file.read_text())
    history["events"].append({"action": "publish", "from": "v1", "to": "v2", "at": "2026-01-01T00:00:00+00:00"})
    root.history_file.write_text(json.dumps(history))
    root.current_file.write_text("v2")
    root.publish("v2")
    assert os.readlink(root.current_link) == "versions/v2"
