"""Nightly quick tune (03:00 UTC) and eval (04:00 UTC, after the tune) of the current version; both stopped by
default: `dagster schedule start --start-all -w workspace.yaml` (or the UI) turns them on; the daemon runs them."""

import dagster as dg

from kg_assets.defs.eval.jobs import eval_job
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.defs.tuning.jobs import tune


def current_version_schedule(name: str, job_name: str, cron: str) -> dg.ScheduleDefinition:
    """A stopped-by-default schedule that runs job `job_name` (with its default config) on the current version's
    partition, once per tick; it skips while nothing is published."""

    @dg.schedule(
        name=name,
        job_name=job_name,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Run `{job_name}` on the current version (root from the lifecycle resource).",
    )
    def run_on_current(
        context: dg.ScheduleEvaluationContext, lifecycle: LifecycleResource
    ) -> dg.RunRequest | dg.SkipReason:
        current = lifecycle.get_root().current()
        if current is None:
            return dg.SkipReason("nothing is published")
        when = context.scheduled_execution_time
        return dg.RunRequest(run_key=f"{name}-{current}-{when:%Y%m%d}", partition_key=current)

    return run_on_current


nightly_quick_tune = current_version_schedule("nightly_quick_tune", tune.name, "0 3 * * *")
nightly_eval = current_version_schedule("nightly_eval", eval_job.name, "0 4 * * *")
SCHEDULES = [nightly_quick_tune, nightly_eval]
