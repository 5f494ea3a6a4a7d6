"""The tuning_profile asset on a real IVF version: the figures and the recall/latency plot an operator reads."""

from __future__ import annotations

from typing import Any

import dagster as dg

from kg_assets.definitions import defs
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample


def tune(root: LifecycleRoot, instance: dg.DagsterInstance, **config: Any) -> dict[str, Any]:
    """Materialize `tuning_profile` for v1 and return its metadata values."""
    instance.add_dynamic_partitions("index_versions", ["v1"])
    result = defs.resolve_job_def("tune").execute_in_process(
        partition_key="v1",
        instance=instance,
        run_config={
            "resources": {"lifecycle": {"config": {"root": str(root.root)}}},
            "ops": {"tuning_profile": {"config": config}},
        },
    )
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_sweep_metadata_names_the_chosen_point_and_plots_the_frontier(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    with dg.instance_for_test() as instance:
        meta = tune(root, instance, samples=100)
    assert (meta["mode"], meta["factory"], meta["ntotal"], meta["k"]) == ("quick", "IVF8,Flat", 500, 10)
    assert meta["recall_at_k"] >= meta["target_recall"] == 0.95 and meta["met_target"]
    assert meta["points_measured"] >= 2 and meta["seconds"] > 0 and meta["bytes_per_query"] > 0
    plot = meta["frontier"].splitlines()
    chosen = [row for row in plot if "**chosen**" in row]
    assert len(chosen) == 1 and f"nprobe={meta['chosen']['nprobe']}" in chosen[0]
    assert all("█" in row and "▒" in row for row in plot[2:])


def test_override_metadata_shows_what_a_load_applies(root: LifecycleRoot, samples: dict) -> None:
    stage_sample(root, "v1", samples["a"])
    with dg.instance_for_test() as instance:
        meta = tune(root, instance, mode="overrides", nprobe=6)
    assert meta["mode"] == "overrides" and meta["overrides"] == {"nprobe": 6}
    assert meta["active"]["nprobe"] == 6 and meta["factory"] == "IVF8,Flat"
