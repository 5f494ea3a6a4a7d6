"""Issue 11 item 4: on a full disk rollback and gc still work (engine-side when the Dagster instance cannot record
them) and say so; publish fails with a one-line message and moves nothing. Needs root for a small tmpfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl, stage_args
from kg_assets_tests.conftest import published_state
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / f"filler-{len(list(disk.glob('filler-*')))}", "wb") as fh:
        try:
            while True:
                fh.write(bytes(1 << 20))
                fh.flush()
        except OSError:
            pass
    assert os.statvfs(disk).f_bavail == 0


def test_rollback_and_gc_work_on_a_full_disk(small_disk: Path, cli_env: dict[str, str], samples: dict) -> None:
    env = {**cli_env, "KG_INDEXES_DIR": str(small_disk / "indexes")}
    root = LifecycleRoot(small_disk / "indexes")
    for version, sample in (("v1", "a"), ("v2", "b"), ("v3", "a")):
        assert indexctl(env, *stage_args(version, samples[sample])).returncode == 0
    for version in ("v1", "v2", "v3"):
        assert indexctl(env, "publish", version).returncode == 0
    assert indexctl(env, "rollback", "v2").returncode == 0  # v3 is now the previous version, v1 the oldest
    _fill(small_disk)

    before = published_state(root)
    done = indexctl(env, "publish", "v3")
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        f"indexctl: error: the Dagster instance at {small_disk / 'indexes' / '.dagster'} cannot record runs: "
        "its disk is full"
    ]
    assert published_state(root) == before

    done = indexctl(env, "rollback", "v3")
    assert done.returncode == 0, done.stderr
    assert "Rolled back to v3 (was v2)" in done.stdout and "ran rollback without recording a Dagster run" in done.stderr
    assert root.current() == "v3" and root.history()[-1]["to"] == "v3"
    assert os.readlink(root.current_link) == "versions/v3"

    _fill(small_disk)  # the rollback used the root's reserve; the disk is full again
    done = indexctl(env, "gc", "--keep", "0")
    assert done.returncode == 0, done.stderr
    assert "removed versions: v1" in done.stdout and "ran gc without recording" in done.stderr
    assert root.list_versions() == ["v2", "v3"]


def test_gc_recreates_the_reserve_so_a_later_flip_on_a_full_disk_works(
    small_disk: Path, cli_env: dict[str, str], samples: dict
) -> None:
    """Issue 20 item 14: the rollback reserve a flip used on a full disk comes back when gc frees space (before:
    the next flip on a full disk failed with a raw OSError); with no reserve, a flip's error names the root."""
    env = {**cli_env, "KG_INDEXES_DIR": str(small_disk / "indexes")}
    root = LifecycleRoot(small_disk / "indexes")
    for version, sample in (("v1", "a"), ("v2", "b"), ("v3", "a"), ("v4", "b")):
        assert indexctl(env, *stage_args(version, samples[sample])).returncode == 0
    for version in ("v1", "v2", "v3"):
        assert indexctl(env, "publish", version).returncode == 0
    _fill(small_disk)
    assert indexctl(env, "rollback", "v2").returncode == 0  # took the reserve
    assert not (root.root / ".reserve").exists()
    done = indexctl(env, "gc", "--keep", "0")
    assert done.returncode == 0 and "removed versions: v4, v1" in done.stdout, (done.stdout, done.stderr)
    assert (root.root / ".reserve").stat().st_size == 1 << 20
    _fill(small_disk)
    done = indexctl(env, "rollback", "v3")
    assert done.returncode == 0, done.stderr
    assert root.current() == "v3" and root.history()[-1]["to"] == "v3"
    _fill(small_disk)
    before = published_state(root)
    done = indexctl(env, "rollback", "v2")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        f"indexctl: error: rollback v2: no space left on the disk of {root.root} to write "
    ), done.stderr
    assert published_state(root) == before


def test_a_build_on_a_full_disk_names_what_it_could_not_write(small_disk: Path, cli_env: dict[str, str]) -> None:
    """Issue 20 item 14: a build that runs out of disk fails with one line naming the file (before: DuckDB's
    checkpoint at close failed silently, the catalog was sealed into staging empty and the consistency check
    failed with "Table with name chunks does not exist!", naming nothing); nothing is sealed."""
    env = {**cli_env, "KG_INDEXES_DIR": str(small_disk / "indexes")}
    root = LifecycleRoot(small_disk / "indexes")
    root.versions_dir.mkdir(parents=True)
    assert indexctl(env, "gc").returncode == 0  # the Dagster instance exists, as on any root in use
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(bytes(free - (3 << 20)))  # room for the chunks, not for the catalog
    repo = write_repo(small_disk.parent / "repo")
    done = indexctl(env, "build", "v1", "--repo", str(repo))
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "No space left on device" in done.stderr or "disk is full" in done.stderr, done.stderr
    assert str(small_disk) in done.stderr, done.stderr
    assert root.list_versions() == [] and root.current() is None
