"""The eval job: evaluate one version partition (pool.parquet, metrics.json, gate checks)."""

import dagster as dg

from kg_assets.defs.build.assets import index_versions
from kg_assets.defs.eval.assets import EVAL_GROUP

eval_job = dg.define_asset_job(
    "eval",
    selection=dg.AssetSelection.groups(EVAL_GROUP),
    partitions_def=index_versions,
    description="Evaluate a version: every channel on the same queries, the pool, metrics and the publish gate.",
    tags={"kind": "eval"},
)
