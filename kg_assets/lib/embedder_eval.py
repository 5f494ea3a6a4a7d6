"""The static model's evaluation on both labelled sets, through the real build and search: what the `embedder_eval`
asset check blocks on.

The figures come from `scripts/bench.py quality` (our set, `benchmarks/quality`, and the public pack,
`../shared/benchmarks/semble-public`), run for the model under test with `--embedder static:DIR --json OUT`: every
repository built with `indexctl build`, every question through the served retrieval stack. One definition of the
benchmark, the bench's; this module only reads its headline figures and compares them with those a model
recorded in its `provenance.json` (`evaluation.benchmarks`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from kg_assets.lib.errors import NotFoundError, ValidationError

PROJECT = Path(__file__).resolve().parents[2]
BENCH = PROJECT / "scripts" / "bench.py"
SETS = ("ours", "semble")
MODES = ("dense", "hybrid")
TOLERANCE = 0.01  # NDCG@10 below the recorded figure that still passes: the spread of re-runs is < 0.005
PACK_SUMMARY = "**all (mean of repositories)**"  # the bench's row of the pack's summary (semble's own mean)


def headline(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """NDCG@10 per set and mode from the bench's JSON report: our set over all questions, the pack as the mean
    of its repositories (as its published figures are)."""
    figures: dict[str, dict[str, float]] = {}
    if "ours" in report:
        figures["ours"] = {mode: report["ours"]["by_category"][mode]["all"]["ndcg_at_k"] for mode in MODES}
    if "semble" in report:
        figures["semble"] = {mode: report["semble"][PACK_SUMMARY][mode] for mode in MODES}
    return figures


def benchmark_figures(embedder_spec: str) -> dict[str, dict[str, float]]:
    """Run both sets through `scripts/bench.py quality` with `embedder_spec`; NDCG@10 per set and mode."""
    if not BENCH.is_file():
        raise NotFoundError(f"{BENCH} not found: the embedder evaluation runs in a checkout of the project")
    with tempfile.TemporaryDirectory(prefix="kg-embedder-eval-") as scratch:
        out = Path(scratch) / "report.json"
        command = [sys.executable, str(BENCH), "quality", "--set", "all", "--embedder", embedder_spec]
        done = subprocess.run([*command, "--json", str(out)], cwd=PROJECT, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ValidationError(f"the quality bench failed for {embedder_spec}: {last}")
        return headline(json.loads(out.read_text(encoding="utf-8")))


def regressions(
    figures: dict[str, dict[str, float]], recorded: dict[str, dict[str, float]], tolerance: float = TOLERANCE
) -> list[str]:
    """Each set and mode whose figure fell more than `tolerance` below the recorded one (or was not measured),
    in words."""
    found = []
    for name in (n for n in SETS if n in recorded):
        for mode, floor in recorded[name].items():
            value = figures.get(name, {}).get(mode)
            if value is None:
                found.append(f"{name} {mode}: not measured (recorded {floor:.3f})")
            elif value < floor - tolerance:
                found.append(f"{name} {mode}: {value:.3f} < recorded {floor:.3f} - {tolerance}")
    return found
