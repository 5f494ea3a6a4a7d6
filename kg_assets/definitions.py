"""The single Dagster entry point for `dagster dev -w workspace.yaml`, `dagster asset materialize`."""

import os

import dagster as dg

from kg_assets.defs.automation.resources import RepoWatch
from kg_assets.defs.automation.schedules import SCHEDULES
from kg_assets.defs.automation.sensors import SENSORS
from kg_assets.defs.build.assets import BUILD_ASSETS, DEFAULT_EXECUTOR, OUTPUTS
from kg_assets.defs.build.checks import catalog_consistent
from kg_assets.defs.build.jobs import build, faiss_idmap_export, faiss_join, faiss_join_refresh
from kg_assets.defs.build.resources import BuildSettings, build_outputs
from kg_assets.defs.embedder.assets import EMBEDDER_ASSETS
from kg_assets.defs.embedder.checks import embedder_eval_check
from kg_assets.defs.embedder.jobs import embedder_training_job
from kg_assets.defs.embedder.resources import EMBEDDER_TRAINING, EmbedderTraining
from kg_assets.defs.eval.assets import evaluation_assets
from kg_assets.defs.eval.jobs import eval_job
from kg_assets.defs.lifecycle.jobs import JOBS
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.defs.tuning.assets import tuning_profile
from kg_assets.defs.tuning.jobs import tune
from kg_assets.lib.errors import UsageError


def executor() -> dg.ExecutorDefinition:
    """In-process unless a run asks for more: the multiprocess default spawns an interpreter per step (~2 s each
    on these machines). `execution: {config: {multiprocess: {max_concurrent: N}}}` runs shards in parallel
    processes; with $KG_EXECUTOR=celery (dagster-celery installed) every step is a Celery task instead, with
    $KG_EXECUTOR=k8s (dagster-k8s) a Kubernetes Job."""
    if os.environ.get("KG_EXECUTOR") == "celery":
        from dagster_celery import celery_executor

        return celery_executor
    if os.environ.get("KG_EXECUTOR") == "k8s":  # a pod per step; see deploy/k8s/
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    base = dg.multi_or_in_process_executor
    schema = dg.Field(base.config_schema.as_field().config_type, default_value={"in_process": {}})
    return base.configured(lambda config: config, name=DEFAULT_EXECUTOR, config_schema=schema)


def execution_config() -> dict:
    """The run config's `execution` block for $KG_EXECUTOR: `multiprocess` ($KG_MAX_CONCURRENT processes, default
    one per core) or `celery` (broker and result backend $KG_CELERY_BROKER)."""
    kind = os.environ.get("KG_EXECUTOR", "")
    if kind == "multiprocess":
        return {
            "execution": {"config": {"multiprocess": {"max_concurrent": int(os.environ.get("KG_MAX_CONCURRENT", 0))}}}
        }
    if kind == "celery":
        broker = {"env": "KG_CELERY_BROKER"}
        return {"execution": {"config": {"broker": broker, "backend": broker}}}
    raise UsageError(f"KG_EXECUTOR={kind!r}: use multiprocess or celery (unset: in-process)")


def build_job() -> dg.JobDefinition:
    """The build job, as every step process (multiprocess, Celery worker) reconstructs it."""
    return defs.resolve_job_def("build")


lifecycle = LifecycleResource()
settings = BuildSettings()
defs = dg.Definitions(
    assets=[*BUILD_ASSETS, tuning_profile, evaluation_assets, faiss_idmap_export, faiss_join, *EMBEDDER_ASSETS],
    asset_checks=[catalog_consistent, embedder_eval_check],
    jobs=[*JOBS, build, tune, eval_job, faiss_join_refresh, embedder_training_job],
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "lifecycle": lifecycle,
        "settings": settings,
        OUTPUTS: build_outputs,
        "watch": RepoWatch(),
        EMBEDDER_TRAINING: EmbedderTraining(),
    },
    executor=executor(),
)
