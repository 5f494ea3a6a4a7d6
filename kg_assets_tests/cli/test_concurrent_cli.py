"""Two operators publish at the same moment through indexctl (two Dagster runs, one lifecycle pool)."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL, stage_sample


def test_simultaneous_publishes_never_lose_an_update(root: LifecycleRoot, samples: dict, cli_env: dict) -> None:
    for version, sample in (("v1", "a"), ("v2", "b"), ("v3", "a")):
        stage_sample(root, version, samples[sample])
    root.publish("v1")
    procs = [
        subprocess.Popen(
            [*INDEXCTL, "publish", v], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for v in ("v2", "v3")
    ]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {0, 5} and 0 in codes, outcomes
    for code, err in outcomes:
        if code == 5:  # the loser says why instead of silently overwriting the winner
            assert "another operator moved it" in err
    flips = root.history()[1:]
    assert len(flips) == codes.count(0)
    assert flips[0]["from"] == "v1"
    assert all(a["to"] == b["from"] for a, b in itertools.pairwise(flips))
    assert Path(root.current_link.resolve()).name == root.current() == flips[-1]["to"]
