"""The publish gate of offline evals: the decision recorded with each eval run, the record of each version's
newest eval (`<root>/.eval/<version>.json`, tied to its catalog's sha256), and whether publishing a version is
refused, re-checked against the version current at that moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NotRequired, TypedDict

from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.fsutil import read_json
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.retrieval_metrics import compare_mrr, r4

GATE_DIR = ".eval"  # under the lifecycle root: <root>/.eval/<version>.json, the newest eval of each version


class RecallCheck(TypedDict):
    floor: float
    value: float
    passed: bool


class GateDecision(TypedDict):
    """What an eval decided about publishing its version (`mrr` is `compare_mrr`'s check, or a skipped one)."""

    passed: bool
    failures: list[str]
    ann_recall: RecallCheck
    mrr: dict[str, Any]
    measured_overrides: NotRequired[dict[str, float]]


class GateRecord(TypedDict):
    """`<root>/.eval/<version>.json`: the newest eval of a version, what publish, diff and the sensors read."""

    version: str
    run_id: str
    at: str
    catalog_sha256: str
    metrics_path: str
    pool_path: str
    pool_rows: int
    duckdb: str
    gate: GateDecision
    summary: dict[str, Any]


def record_path(root: LifecycleRoot, version: str) -> Path:
    return root.root / GATE_DIR / f"{version}.json"


def gate(
    metrics: dict[str, Any],
    baseline: GateRecord | None,
    base_metrics: dict[str, Any] | None,
    recall_floor: float,
    max_mrr_drop: float,
) -> GateDecision:
    """ANN recall@k against flat at least the floor; faiss MRR@k at most `max_mrr_drop` below the current
    version's last eval, on the labelled queries both ran (nothing to compare against: passes, marked skipped)."""
    recall = metrics["ann"]["recall_at_k"]
    recall_check = RecallCheck(floor=recall_floor, value=recall, passed=recall >= recall_floor)
    if base_metrics and base_metrics.get("faiss_rr"):
        mrr_check = compare_mrr(
            metrics["faiss_rr"], metrics["k"], base_metrics["faiss_rr"], base_metrics["k"], max_mrr_drop
        )
        mrr_check["baseline"] = {"version": baseline["version"], "run_id": baseline["run_id"]}
    else:
        reason = "nothing is published" if baseline is None else "the current version's last eval has no labels"
        mrr_check = {"passed": True, "max_drop": max_mrr_drop, "skipped": reason}
    failures = [] if recall_check["passed"] else [f"ANN recall@k {recall:.4f} is below the floor {recall_floor}"]
    if not mrr_check["passed"]:
        failures.append(mrr_check["reason"])
    return GateDecision(passed=not failures, failures=failures, ann_recall=recall_check, mrr=mrr_check)


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline figures kept in the gate record: what `diff` shows and deltas compare."""
    summary: dict[str, Any] = {
        "k": metrics["k"],
        "ann_recall_at_k": metrics["ann"]["recall_at_k"],
        "ann_tie_recall_at_k": metrics["ann"]["tie_recall_at_k"],
        "queries": metrics["ann"]["queries"],
        "labelled_queries": metrics["labelled_queries"],
    }
    for channel, values in metrics["channels"].items():
        for name, value in values.items():
            summary[f"{channel}_{name}"] = value
    return summary


def delta(summary: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, float] | None:
    if not baseline:
        return None
    keys = [key for key, value in summary.items() if isinstance(value, float) and isinstance(baseline.get(key), float)]
    return {key: r4(summary[key] - baseline[key]) for key in keys}


def latest_eval(root: LifecycleRoot, version: str) -> GateRecord | None:
    """The record of the version's newest eval (paths, gate, headline summary), or None if it has none.

    A record whose catalog hash is not the version's (the id was reused by a later build) is ignored.
    """
    path = record_path(root, version)
    if not path.is_file():
        return None
    try:
        record = read_json(path)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ValidationError(
            f"{path} is not a readable eval record ({exc}); re-run indexctl eval --version {version}"
        ) from None
    try:
        catalog_sha = root.catalog_sha256(version)
    except (NotFoundError, ValidationError):
        return None
    return record if record.get("catalog_sha256") == catalog_sha else None


def read_metrics(record: GateRecord) -> dict[str, Any] | None:
    """The metrics.json a gate record points at, or None when it was removed or is unreadable."""
    try:
        return read_json(Path(record["metrics_path"]))
    except (OSError, ValueError):
        return None


def publish_refusal(root: LifecycleRoot, version: str) -> str | None:
    """Why the version's last eval forbids publishing it, or None (passed, or never evaluated).

    The recall floor is the one that eval checked; the MRR comparison is redone against the current version's
    last eval as of now (the current version may have changed since), falling back to the recorded result when
    either metrics file is gone. Re-publishing the current version is never refused for MRR.
    """
    record = latest_eval(root, version)
    if record is None:
        return None
    gate = record["gate"]
    recall = gate["ann_recall"]
    failures = [] if recall["passed"] else [f"ANN recall@k {recall['value']:.4f} is below the floor {recall['floor']}"]
    current = root.current()
    if current is not None and current != version:
        mrr = gate["mrr"]
        baseline = latest_eval(root, current)
        ours, theirs = read_metrics(record), read_metrics(baseline) if baseline else None
        if ours is not None and baseline is not None and theirs is not None and theirs.get("faiss_rr"):
            mrr = compare_mrr(ours["faiss_rr"], ours["k"], theirs["faiss_rr"], theirs["k"], mrr["max_drop"])
            mrr["baseline"] = {"version": current, "run_id": baseline["run_id"]}
        if not mrr["passed"]:
            failures.append(f"{mrr['reason']} (against {current})")
    if not failures:
        return None
    return f"{version}'s last eval ({record['run_id']}) fails the gate: " + "; ".join(failures)
