"""Issue 11 for `indexctl build`: a SIGKILLed build leaves no indexer running and nothing gc cannot clean."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.cli.test_indexctl import indexctl
from kg_assets_tests.conftest import INDEXCTL
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.sample_repo import write_repo

pytestmark = pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")


def _children_running(parent: int, name: str) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and name.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkill_of_build_leaves_no_indexer_and_gc_cleans_its_scratch(cli_env: dict[str, str], tmp_path: Path) -> None:
    repo = write_repo(tmp_path / "repo")
    build = subprocess.Popen(
        [*INDEXCTL, "build", "v1", "--repo", str(repo)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (indexers := _children_running(build.pid, "scip-python")):
        assert build.poll() is None and time.monotonic() < deadline, "the build never started scip-python"
        time.sleep(0.05)
    build.send_signal(signal.SIGKILL)
    build.wait()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in indexers):
        assert time.monotonic() < deadline, f"scip-python {indexers} outlived the killed build"
        time.sleep(0.05)
    root = LifecycleRoot(cli_env["KG_INDEXES_DIR"])
    assert list((root.root / ".scratch").iterdir())  # the copy scip-python indexed, under the root, not /tmp
    done = indexctl(cli_env, "gc", "--staging-max-age", "0")
    assert done.returncode == 0, done.stderr
    assert not list((root.root / ".scratch").iterdir()) and not root.staging_dir("v1").exists()
    assert not os.listdir(root.versions_dir)
