"""Build a version for each new commit of a watched repository; optionally evaluate and publish it.

`new_commit_build` (stopped by default) reads HEAD of $KG_WATCH_REPO on each tick; for a commit it has not
built yet (its cursor is the last commit it requested) it registers the version partition `c<time>-<sha>` and
requests one `build` run of the repository's working tree. With $KG_WATCH_AUTO_PUBLISH on, that run is tagged
`kg/auto_publish`, and two run-status sensors carry the tagged version on: build succeeded -> `eval` run;
eval succeeded, its gate passed and `indexctl health` finds the version sound -> `publish` run. Those two are
running by default but act only on tagged runs, so nothing is published unless the operator asked for it.
"""

import dagster as dg

from kg_assets.defs.automation.resources import RepoWatch
from kg_assets.defs.build.assets import index_versions
from kg_assets.defs.build.jobs import build
from kg_assets.defs.eval.jobs import eval_job
from kg_assets.defs.lifecycle.jobs import publish
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib.commits import head_commit, version_for_commit
from kg_assets.lib.eval_gate import latest_eval, publish_refusal
from kg_assets.lib.health import version_health

AUTO_PUBLISH_TAG = "kg/auto_publish"
COMMIT_TAG = "kg/commit"
PARTITION_TAG = "dagster/partition"


@dg.sensor(job=build, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def new_commit_build(
    context: dg.SensorEvaluationContext, lifecycle: LifecycleResource, watch: RepoWatch
) -> dg.SensorResult | dg.SkipReason:
    """Build a new version partition when HEAD of the watched repository ($KG_WATCH_REPO) moves."""
    repo = watch.repo_path()
    if repo is None:
        return dg.SkipReason("no repository to watch: set KG_WATCH_REPO for the daemon (or the watch resource)")
    commit = head_commit(repo)
    if commit.sha == context.cursor:
        return dg.SkipReason(f"HEAD {commit.sha[:10]} of {repo} is already built")
    version = version_for_commit(commit)
    if lifecycle.get_root().version_dir(version).exists():
        return dg.SensorResult(skip_reason=f"version {version} already exists", cursor=commit.sha)
    tags = {COMMIT_TAG: commit.sha}
    if watch.auto_publish_enabled():
        tags[AUTO_PUBLISH_TAG] = "true"
    request = dg.RunRequest(
        run_key=version,
        partition_key=version,
        run_config={"resources": {"settings": {"config": {"repo": str(repo)}}}},
        tags=tags,
    )
    context.log.info(f"HEAD of {repo} is {commit.sha}: building version {version}")
    return dg.SensorResult(
        run_requests=[request],
        dynamic_partitions_requests=[index_versions.build_add_request([version])],
        cursor=commit.sha,
    )


def _auto_version(run: dg.DagsterRun) -> str | None:
    """The version partition of a run the watcher started with auto-publish on, else None."""
    return run.tags.get(PARTITION_TAG) if run.tags.get(AUTO_PUBLISH_TAG) == "true" else None


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[build],
    request_job=eval_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def auto_eval_after_build(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    """Evaluate a version the watcher built with auto-publish on."""
    run = context.dagster_run
    version = _auto_version(run)
    if version is None:
        return dg.SkipReason(f"run {run.run_id} is not an auto-publish build")
    tags = {AUTO_PUBLISH_TAG: "true", COMMIT_TAG: run.tags.get(COMMIT_TAG, "")}
    return dg.RunRequest(run_key=f"eval-{run.run_id}", partition_key=version, tags=tags)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[eval_job],
    request_job=publish,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def auto_publish_after_eval(
    context: dg.RunStatusSensorContext, lifecycle: LifecycleResource
) -> dg.RunRequest | dg.SkipReason:
    """Publish an auto-publish version when this eval run's gate passed and every health check passes."""
    run = context.dagster_run
    version = _auto_version(run)
    if version is None:
        return dg.SkipReason(f"run {run.run_id} is not an auto-publish eval")
    root = lifecycle.get_root()
    record = latest_eval(root, version)
    if record is None or not record["run_id"].endswith(run.run_id[:8]):
        return dg.SkipReason(f"the latest eval of {version} is not from run {run.run_id}; not publishing")
    refusal = publish_refusal(root, version)
    if refusal:
        return dg.SkipReason(refusal)
    health = version_health(root, version)
    if not health.ok:
        failed = "; ".join(f"{c.name}: {c.detail}" for c in health.failures())
        return dg.SkipReason(f"{version} is unhealthy: {failed}")
    context.log.info(f"{version} passed its checks and the eval gate: publishing it")
    return dg.RunRequest(
        run_key=f"publish-{version}",
        # a compare-and-swap against CURRENT as this tick saw it: an operator's flip in between wins
        run_config={
            "ops": {"publish_version": {"config": {"version": version, "expect_current": root.current() or ""}}}
        },
        tags={AUTO_PUBLISH_TAG: "true", COMMIT_TAG: run.tags.get(COMMIT_TAG, "")},
    )


SENSORS = [new_commit_build, auto_eval_after_build, auto_publish_after_eval]
