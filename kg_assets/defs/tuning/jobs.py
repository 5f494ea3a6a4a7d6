"""The tune job and its nightly schedule (stopped by default)."""

import dagster as dg

from kg_assets.defs.build.assets import index_versions
from kg_assets.defs.tuning.assets import tuning_profile
from kg_assets.lib.lifecycle import LifecycleRoot

tune = dg.define_asset_job(
    "tune",
    selection=[tuning_profile],
    partitions_def=index_versions,
    description="Sweep (or override) the runtime knobs of one version and write its tuning.json.",
    tags={"kind": "tuning"},
)


@dg.schedule(
    job=tune, cron_schedule="0 3 * * *", execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.STOPPED
)
def nightly_quick_tune(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    """A quick sweep of the current version every night (root from $KG_INDEXES_DIR); turn on in the UI or with
    `dagster schedule start nightly_quick_tune -w workspace.yaml`."""
    current = LifecycleRoot().current()
    if current is None:
        return dg.SkipReason("nothing is published")
    return dg.RunRequest(run_key=f"tune-{current}-{context.scheduled_execution_time:%Y%m%d}", partition_key=current)
