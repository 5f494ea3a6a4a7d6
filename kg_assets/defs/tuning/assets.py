"""`tuning_profile`: the runtime operating point of a complete version, swept against exact ground truth."""

import time

import dagster as dg

from kg_assets.defs.build.assets import catalog, faiss_index, index_versions
from kg_assets.defs.config import config_class
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import progress, tuning, tuning_run
from kg_assets.lib.errors import UsageError
from kg_assets.lib.settings import from_values

# The sweep's settings, plus one override field per runtime knob (setting any of them means overrides).
TuneConfig = config_class(
    tuning_run.TuneSettings, "TuneConfig", {k.name: (k.kind, f"Override: {k.help}") for k in tuning.KNOBS.values()}
)


def plot_markdown(frontier: list[dict], chosen: dict) -> str:
    """The sweep's recall-vs-latency frontier as a markdown table, a bar for recall and one for latency (relative
    to the slowest point) per point: the plot an operator reads the trade-off from. `chosen` (a point) is
    added when its re-timed latency took it off the frontier measured while steering."""
    if all(point["params"] != chosen["params"] for point in frontier):
        frontier = sorted([*frontier, chosen], key=lambda point: point["latency_ms"])
    slowest = max((point["latency_ms"] for point in frontier), default=0) or 1
    rows = ["| params | recall | | ms/query | | QPS |", "| --- | ---: | --- | ---: | --- | ---: |"]
    for point in frontier:
        params = ", ".join(f"{k}={v:g}" for k, v in point["params"].items()) or "exact"
        mark = " **chosen**" if point["params"] == chosen["params"] else ""
        recall_bar = "█" * round(20 * point["recall"])
        latency_bar = "▒" * max(1, round(20 * point["latency_ms"] / slowest))
        rows.append(
            f"| {params}{mark} | {point['recall']:.3f} | {recall_bar} | {point['latency_ms']:.4f} | {latency_bar} "
            f"| {point['qps']:,.0f} |"
        )
    return "\n".join(rows)


@dg.asset(
    deps=[faiss_index, catalog],
    partitions_def=index_versions,
    group_name="tuning",
    kinds={"faiss", "json"},
    description="tuning.json of a complete version: the fastest point reaching the target recall, the frontier.",
)
def tuning_profile(
    context: dg.AssetExecutionContext, config: TuneConfig, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root = lifecycle.get_root()
    overrides = {name: getattr(config, name) for name in tuning.KNOBS if getattr(config, name) is not None}
    if config.mode == "overrides" or overrides:
        if config.mode == "full":
            raise UsageError("a sweep and manual overrides cannot be combined; run them separately")
        if not overrides:
            raise UsageError(f"mode overrides needs at least one of {', '.join(tuning.KNOBS)}")
        profile = tuning_run.set_overrides(root, context.partition_key, overrides, run_id=context.run_id)
        return dg.MaterializeResult(
            metadata={
                "mode": "overrides",
                "overrides": dg.MetadataValue.json(profile["overrides"]),
                "active": dg.MetadataValue.json(tuning.active_params(profile)),
                "factory": profile["factory"],
                "ntotal": profile["ntotal"],
            }
        )
    started = time.perf_counter()
    profile = tuning_run.tune_version(
        root,
        context.partition_key,
        from_values(tuning_run.TuneSettings, config.model_dump()),
        run_id=context.run_id,
        progress=progress.log_progress(context.log.info, "tuning sweep"),
    )
    if not profile["met_target"]:
        context.log.warning(
            f"no point reached recall@{profile['k']} {config.target_recall}; chose the most accurate "
            f"({profile['recall_at_k']})"
        )
    chosen = {k: profile[k] for k in tuning.KNOBS if k in profile}
    chosen_point = {
        "params": chosen,
        "recall": profile["recall_at_k"],
        **{k: profile[k] for k in ("latency_ms", "qps")},
    }
    return dg.MaterializeResult(
        metadata={
            "mode": profile["mode"],
            "factory": profile["factory"],
            "ntotal": profile["ntotal"],
            "param_str": profile["param_str"] or "-",
            "chosen": dg.MetadataValue.json(chosen),
            "k": profile["k"],
            "target_recall": profile["target_recall"],
            "recall_at_k": profile["recall_at_k"],
            "latency_ms": profile["latency_ms"],
            "qps": profile["qps"],
            "bytes_per_query": profile["bytes_per_query"] if profile["bytes_per_query"] is not None else "-",
            "met_target": profile["met_target"],
            "points_measured": profile["points_measured"],
            "queries": dg.MetadataValue.json(profile["queries"]),
            "seconds": round(time.perf_counter() - started, 3),
            "frontier": dg.MetadataValue.md(plot_markdown(profile["frontier"], chosen_point)),
        }
    )
