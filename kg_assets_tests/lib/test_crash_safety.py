"""SIGKILL a process at random points while it stages and publishes; the root must stay consistent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample

KILLS = 40


def _assert_consistent(root: LifecycleRoot) -> None:
    current = root.current()
    if current is None:
        assert not root.current_link.exists()
        return
    root.verify_version(current)  # CURRENT names a complete version whose bytes match its manifest
    # The link may lag CURRENT by one flip after a crash (the next locked operation repairs it),
    # but it always points at a complete version.
    assert root.current_link.is_symlink()
    root.verify_version(Path(os.readlink(root.current_link)).name)


def test_publish_and_stage_survive_sigkill_at_random_points(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "base", samples["a"])
    root.publish("base")
    rng = random.Random(1234)
    mid_stage = published_by_victim = 0
    worker = [sys.executable, "-m", "kg_assets_tests.lib.lifecycle_worker", "churn", str(root.root)]
    for i in range(KILLS):
        proc = subprocess.Popen([*worker, str(samples["b"]["faiss"].parent)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_consistent(root)
        mid_stage += any(root.versions_dir.glob("c*.staging"))
        published_by_victim += (root.current() or "").startswith("c")
        # The next command works: a fresh stage and publish, and the published version verifies.
        version = f"after{i}"
        stage_sample(root, version, samples["a"])
        assert root.publish(version).changed
        _assert_consistent(root)
        assert os.readlink(root.current_link) == f"versions/{version}"
        root.gc(keep=3, staging_max_age_s=0)
    # The kills landed both inside a stage and after the victim had published something.
    assert mid_stage > 0 and published_by_victim > 0
    assert not list(root.versions_dir.glob("*.staging"))
    assert not list(root.root.glob(".*.tmp-*"))
