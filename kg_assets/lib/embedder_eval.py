"""The static model's evaluation on both labelled sets, through the real build and search: what the `embedder_eval`
asset check blocks on.

The figures come from `scripts/bench.py quality` (our set, `benchmarks/quality`, and the public pack,
`../shared/benchmarks/semble-public`), run for the model under test with `--embedder static:DIR --record`: every
repository built with `indexctl build`, every question through the served retrieval stack, the report recorded in
the model's `provenance.json`. One definition of the benchmark, the bench's; this module only reads the headline
figures of such a report and compares them with those of the committed model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.gitsafe import run_git
from kg_assets.lib.static_embedder import MODEL_DIR

PROJECT = Path(__file__).resolve().parents[2]
BENCH = PROJECT / "scripts" / "bench.py"
SETS = ("ours", "semble")
MODES = ("dense", "hybrid")
TOLERANCE = 0.01  # NDCG@10 below the recorded figure that still passes: the spread of re-runs is < 0.005
PACK_SUMMARY = "**all (mean of repositories)**"  # the bench's row of the pack's summary (semble's own mean)
RECORD = "labelled_all_static"  # where `bench.py quality --set all --embedder static:DIR --record` puts its report


def headline(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """NDCG@10 per set and mode from the bench's JSON report: our set over all questions, the pack as the mean
    of its repositories (as its published figures are)."""
    figures: dict[str, dict[str, float]] = {}
    if "ours" in report:
        figures["ours"] = {mode: report["ours"]["by_category"][mode]["all"]["ndcg_at_k"] for mode in MODES}
    if "semble" in report:
        figures["semble"] = {mode: report["semble"][PACK_SUMMARY][mode] for mode in MODES}
    return figures


def recorded_figures(provenance: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The headline figures a model's provenance records from the bench (`evaluation.labelled_all_static`); {}
    when it records none."""
    return headline(provenance.get("evaluation", {}).get(RECORD, {}))


def benchmark_figures(model: Path) -> dict[str, dict[str, float]]:
    """Run both sets through `scripts/bench.py quality` with the static model at `model`, which records its
    report in the model's provenance (`--record`); NDCG@10 per set and mode."""
    if not BENCH.is_file():
        raise NotFoundError(f"{BENCH} not found: the embedder evaluation runs in a checkout of the project")
    command = [sys.executable, str(BENCH), "quality", "--set", "all", "--embedder", f"static:{model}", "--record"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ValidationError(f"the quality bench failed for the static model {model}: {last}")
    return recorded_figures(json.loads((model / "provenance.json").read_text(encoding="utf-8")))


def committed_figures() -> dict[str, dict[str, float]]:
    """The figures the committed model recorded, from its provenance as the checkout's HEAD holds it (a training
    run may have overwritten the file in the working tree); {} when it recorded none."""
    relative = (MODEL_DIR / "provenance.json").relative_to(PROJECT).as_posix()
    shown = run_git(PROJECT, "show", f"HEAD:{relative}")
    return recorded_figures(json.loads(shown.stdout)) if shown.returncode == 0 else {}


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
