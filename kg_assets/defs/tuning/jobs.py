"""The tune job (its nightly schedule is in `kg_assets/defs/automation/schedules.py`)."""

import dagster as dg

from kg_assets.defs.build.assets import index_versions
from kg_assets.defs.tuning.assets import tuning_profile

tune = dg.define_asset_job(
    "tune",
    selection=[tuning_profile],
    partitions_def=index_versions,
    description="Sweep (or override) the runtime knobs of one version and write its tuning.json.",
    tags={"kind": "tuning"},
)
