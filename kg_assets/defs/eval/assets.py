"""`eval_pool` (pool.parquet) and `eval_metrics` (metrics.json) of a complete version, with the publish-gate checks.

One step computes both (every channel answers the same queries once); each is its own asset with its own
metadata. The checks are not blocking: a failed gate is recorded, and `publish` refuses the version until it
passes or `--force` is given.
"""

from datetime import UTC, datetime

import dagster as dg

from kg_assets.defs.build.assets import catalog, faiss_index, index_versions
from kg_assets.defs.config import config_class
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.defs.tuning.assets import tuning_profile
from kg_assets.lib import evaluation, progress
from kg_assets.lib.settings import from_values

EVAL_GROUP = "eval"
eval_pool = dg.AssetSpec(
    "eval_pool",
    deps=[faiss_index, catalog, tuning_profile],
    partitions_def=index_versions,
    group_name=EVAL_GROUP,
    kinds={"parquet"},
    description="pool.parquet: every channel's top-k hits (faiss, flat, bm25, xtr, hybrid) per query, hydrated.",
)
eval_metrics = dg.AssetSpec(
    "eval_metrics",
    deps=[eval_pool],
    partitions_def=index_versions,
    group_name=EVAL_GROUP,
    kinds={"json"},
    description="metrics.json: ANN recall@k against exact search, per-channel recall/MRR/nDCG, latency, gate.",
)
ANN_RECALL_CHECK = "ann_recall_floor"
MRR_CHECK = "mrr_no_regression"


EvalConfig = config_class(evaluation.EvalSettings, "EvalConfig")


def channel_table(metrics: dict) -> str:
    """Per-channel figures as a markdown table: labelled recall/MRR/nDCG@k and latency per query."""
    k = metrics["k"]
    rows = [f"| channel | recall@{k} | MRR@{k} | nDCG@{k} | ms/query |", "| --- | ---: | ---: | ---: | ---: |"]
    for channel, *figures, latency in evaluation.channel_rows(metrics):
        cells = " | ".join("-" if value is None else f"{value:.3f}" for value in figures)
        rows.append(f"| {channel} | {cells} | {latency:.3f} |")
    rows += [f"| {channel} | not available: {why} | | | |" for channel, why in metrics["channels_unavailable"].items()]
    return "\n".join(rows)


@dg.multi_asset(
    specs=[eval_pool, eval_metrics],
    check_specs=[
        dg.AssetCheckSpec(ANN_RECALL_CHECK, asset=eval_metrics.key, description="ANN recall@k vs flat >= the floor."),
        dg.AssetCheckSpec(MRR_CHECK, asset=eval_metrics.key, description="faiss MRR@k within the allowed drop."),
    ],
    partitions_def=index_versions,
    name="evaluation",
    description="Offline evaluation of one complete version (runbook section 5).",
)
def evaluation_assets(context: dg.AssetExecutionContext, config: EvalConfig, lifecycle: LifecycleResource):
    record = evaluation.evaluate_version(
        lifecycle.get_root(),
        context.partition_key,
        from_values(evaluation.EvalSettings, config.model_dump()),
        run_id=_run_name(context),
        log=context.log.info,
        progress=lambda label: progress.log_progress(context.log.info, label),
    )
    metrics = record["metrics"]
    gate = metrics["gate"]
    for note in metrics["notes"]:
        context.log.warning(note)
    yield dg.MaterializeResult(
        asset_key=eval_pool.key,
        metadata={
            "path": dg.MetadataValue.path(record["pool_path"]),
            "rows": record["pool_rows"],
            "run": record["run_id"],
            "query_sets": dg.MetadataValue.json(metrics["query_sets"]),
            "channels": ", ".join(metrics["channels_run"]),
            "duckdb": dg.MetadataValue.path(record["duckdb"]),
        },
    )
    yield dg.MaterializeResult(
        asset_key=eval_metrics.key,
        metadata={
            "path": dg.MetadataValue.path(record["metrics_path"]),
            "run": record["run_id"],
            "k": metrics["k"],
            "ann_recall_at_k": metrics["ann"]["recall_at_k"],
            "ann_tie_recall_at_k": metrics["ann"]["tie_recall_at_k"],
            "labelled_queries": metrics["labelled_queries"],
            "channels": dg.MetadataValue.md(channel_table(metrics)),
            "gate_passed": gate["passed"],
            "gate_failures": "; ".join(gate["failures"]) or "-",
            "measured_overrides": dg.MetadataValue.json(gate["measured_overrides"]),
            "delta": dg.MetadataValue.json(metrics["delta"] or {}),
        },
    )
    yield dg.AssetCheckResult(
        asset_key=eval_metrics.key,
        check_name=ANN_RECALL_CHECK,
        passed=gate["ann_recall"]["passed"],
        metadata={"recall_at_k": gate["ann_recall"]["value"], "floor": gate["ann_recall"]["floor"]},
    )
    mrr = gate["mrr"]
    yield dg.AssetCheckResult(
        asset_key=eval_metrics.key,
        check_name=MRR_CHECK,
        passed=mrr["passed"],
        metadata={
            key: mrr.get(key, "-")
            for key in ("mrr_at_k", "baseline_mrr_at_k", "shared_queries", "max_drop", "skipped", "reason")
        },
    )


def _run_name(context: dg.AssetExecutionContext) -> str:
    """Eval run directory name: UTC time then the Dagster run id's first 8 characters (sortable, traceable)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{context.run_id[:8]}"
