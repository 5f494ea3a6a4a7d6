"""Several processes flip the pointer at once while readers resolve `current` in a loop."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample

WORKER = [sys.executable, "-m", "kg_assets_tests.lib.lifecycle_worker"]


def test_concurrent_flips_are_serialized_and_none_is_lost(root: LifecycleRoot, samples: dict) -> None:
    versions = [f"v{i}" for i in range(1, 5)]
    for i, version in enumerate(versions):
        stage_sample(root, version, samples["ab"[i % 2]])
    root.publish("v1")
    readers = [subprocess.Popen([*WORKER, "read", str(root.root), "6"], stdout=subprocess.PIPE, text=True)]
    writers = [
        subprocess.Popen([*WORKER, "flip", str(root.root), "25", *versions], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    flips = []
    for proc in writers:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        flips += [json.loads(line) for line in out.splitlines()[1:]]
    for proc in readers:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "a reader saw a missing or half-written version"
        assert int(out.splitlines()[-1]) > 0

    history = root.history()[1:]  # after the initial publish of v1
    # Every successful flip is in the history exactly once, and nothing else is.
    assert sorted((e["from"], e["to"]) for e in history) == sorted((f["from"], f["to"]) for f in flips)
    assert len(flips) > 4
    # Flips were serialized: each one starts where the previous one ended.
    chain = [root.history()[0], *history]
    assert all(prev["to"] == nxt["from"] for prev, nxt in itertools.pairwise(chain))
    assert root.current() == chain[-1]["to"]
