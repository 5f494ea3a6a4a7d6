"""The single Dagster entry point for `dagster dev -w workspace.yaml`, `dagster asset materialize`."""

import dagster as dg

from kg_assets.defs.automation.resources import RepoWatch
from kg_assets.defs.automation.schedules import SCHEDULES
from kg_assets.defs.automation.sensors import SENSORS
from kg_assets.defs.build.assets import BUILD_ASSETS, OUTPUTS
from kg_assets.defs.build.checks import catalog_consistent
from kg_assets.defs.build.jobs import build, faiss_idmap_export, faiss_join, faiss_join_refresh
from kg_assets.defs.build.resources import BuildOutputs, BuildSettings
from kg_assets.defs.eval.assets import evaluation_assets
from kg_assets.defs.eval.jobs import eval_job
from kg_assets.defs.lifecycle.jobs import JOBS
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.defs.tuning.assets import tuning_profile
from kg_assets.defs.tuning.jobs import tune


def executor() -> dg.ExecutorDefinition:
    """In-process unless a run asks for more: the multiprocess default spawns an interpreter per step (~2 s each
    on these machines). `execution: {config: {multiprocess: {max_concurrent: N}}}` runs shards in parallel
    processes; $KG_EXECUTOR=celery makes every run's steps Celery tasks (see README, More than one machine)."""
    base = dg.multi_or_in_process_executor
    schema = dg.Field(base.config_schema.as_field().config_type, default_value={"in_process": {}})
    return base.configured(lambda config: config, name="in_process_or_multiprocess", config_schema=schema)


lifecycle = LifecycleResource()
settings = BuildSettings()
defs = dg.Definitions(
    assets=[*BUILD_ASSETS, tuning_profile, evaluation_assets, faiss_idmap_export, faiss_join],
    asset_checks=[catalog_consistent],
    jobs=[*JOBS, build, tune, eval_job, faiss_join_refresh],
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "lifecycle": lifecycle,
        "settings": settings,
        OUTPUTS: BuildOutputs(lifecycle=lifecycle, settings=settings),
        "watch": RepoWatch(),
    },
    executor=executor(),
)
