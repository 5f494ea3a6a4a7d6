"""Schedules and sensors with Dagster's test contexts, a real instance and real git repositories; the
auto-publish chain runs for real (build -> eval -> publish) on the sample repository."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kg_assets.definitions import defs
from kg_assets.defs.automation.resources import AUTO_PUBLISH_ENV, WATCH_REPO_ENV, RepoWatch
from kg_assets.defs.automation.schedules import nightly_eval, nightly_quick_tune
from kg_assets.defs.automation.sensors import (
    AUTO_PUBLISH_TAG,
    COMMIT_TAG,
    auto_eval_after_build,
    auto_publish_after_eval,
    new_commit_build,
)
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import stage_sample
from kg_assets_tests.helpers import SCIP_PYTHON
from kg_assets_tests.lib.test_commits import commit_all
from kg_assets_tests.sample_repo import write_repo

FIRST = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    """The sample repository as a git repository with one commit; (path, sha)."""
    path = write_repo(tmp_path / "repo")
    return path, commit_all(path, FIRST, "first")


def tick(root: LifecycleRoot, instance: dg.DagsterInstance, cursor: str | None, **watch: Any) -> Any:
    """One evaluation of the new-commit sensor, as the daemon does it."""
    context = dg.build_sensor_context(
        instance=instance,
        instance_ref=instance.get_ref(),  # as in the daemon: partitions the tick requests count as existing
        cursor=cursor,
        resources={"lifecycle": LifecycleResource(root=str(root.root)), "watch": RepoWatch(**watch)},
        repository_def=defs.get_repository_def(),
    )
    return new_commit_build.evaluate_tick(context)


@pytest.mark.parametrize(
    ("schedule", "job"), [(nightly_quick_tune, "tune"), (nightly_eval, "eval")], ids=["tune", "eval"]
)
def test_nightly_schedules_are_stopped_and_target_the_current_version(
    schedule: dg.ScheduleDefinition, job: str, root: LifecycleRoot, samples: dict
) -> None:
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED and schedule.job_name == job
    with dg.instance_for_test() as instance:
        when = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=when,
            resources={"lifecycle": LifecycleResource(root=str(root.root))},
            repository_def=defs.get_repository_def(),
        )
        assert schedule.evaluate_tick(context).skip_message == "nothing is published"
        stage_sample(root, "v3", samples["a"])
        root.publish("v3")
        instance.add_dynamic_partitions("index_versions", ["v3"])  # what the stage and publish jobs do
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "v3" and request.run_key == f"{schedule.name}-v3-20261124"


def test_sensors_ship_off_or_inert(monkeypatch: pytest.MonkeyPatch, root: LifecycleRoot) -> None:
    assert new_commit_build.default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.delenv(WATCH_REPO_ENV, raising=False)
    with dg.instance_for_test() as instance:
        assert "set KG_WATCH_REPO" in tick(root, instance, None).skip_message


def test_each_new_commit_registers_a_version_and_requests_one_build(
    repo: tuple[Path, str], root: LifecycleRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first = repo
    monkeypatch.setenv(WATCH_REPO_ENV, str(path))  # the daemon's configuration
    monkeypatch.delenv(AUTO_PUBLISH_ENV, raising=False)
    with dg.instance_for_test() as instance:
        data = tick(root, instance, None)
        version = f"c20260102-030405-{first[:10]}"
        (request,) = data.run_requests
        assert (request.job_name, request.partition_key, request.run_key) == (None, version, version)
        assert request.run_config == {"resources": {"settings": {"config": {"repo": str(path)}}}}
        assert request.tags[COMMIT_TAG] == first and AUTO_PUBLISH_TAG not in request.tags  # not unless asked for
        (added,) = data.dynamic_partitions_requests
        assert (added.partitions_def_name, list(added.partition_keys)) == ("index_versions", [version])
        assert data.cursor == first
        assert "already built" in tick(root, instance, first).skip_message
        (path / "parsing.py").write_text("CHANGED = True\n")
        second = commit_all(path, datetime(2026, 1, 5, tzinfo=UTC))
        data = tick(root, instance, first)
        assert [r.partition_key for r in data.run_requests] == [f"c20260105-000000-{second[:10]}"]
        assert data.cursor == second


def test_a_watched_path_without_commits_fails_the_tick(tmp_path: Path, root: LifecycleRoot) -> None:
    with dg.instance_for_test() as instance, pytest.raises(Exception, match="has no HEAD commit"):
        tick(root, instance, None, repo=str(tmp_path))


def _execute(
    request: dg.RunRequest,
    job: str,
    root: LifecycleRoot,
    instance: dg.DagsterInstance,
    *,
    settings: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Any:
    """Run what a sensor requested, in process, against `root`; `settings` and `evaluation` add to the build
    settings and the eval op's config (the daemon would launch the request as it is)."""
    rooted = {"config": {"root": str(root.root)}}
    run_config: dict[str, Any] = {**request.run_config, "resources": {**request.run_config.get("resources", {})}}
    run_config["resources"].update(lifecycle=rooted)
    if settings:
        run_config["resources"]["settings"] = {"config": {**run_config["resources"]["settings"]["config"], **settings}}
    if evaluation:
        run_config["ops"] = {"evaluation": {"config": evaluation}}
    result = defs.resolve_job_def(job).execute_in_process(
        run_config=run_config, partition_key=request.partition_key, tags=request.tags, instance=instance
    )
    assert result.success
    return result


def _on_success(sensor: Any, result: Any, root: LifecycleRoot, instance: dg.DagsterInstance) -> Any:
    """Evaluate a run-status sensor on a finished run, as the daemon does when the run succeeds."""
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_event=result.get_run_success_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"lifecycle": LifecycleResource(root=str(root.root))},
    )
    return sensor(context)


@pytest.mark.skipif(not SCIP_PYTHON.exists(), reason="run scripts/setup.sh (npm ci) for scip-python")
def test_auto_publish_chain_publishes_only_a_version_whose_eval_gate_passed(
    repo: tuple[Path, str], root: LifecycleRoot, tmp_path: Path
) -> None:
    path, first = repo
    eval_config = {"out_dir": str(tmp_path / "eval"), "samples": 40}
    with dg.instance_for_test() as instance:
        (build_request,) = tick(root, instance, None, repo=str(path), auto_publish=True).run_requests
        version = build_request.partition_key
        assert build_request.tags[AUTO_PUBLISH_TAG] == "true"
        instance.add_dynamic_partitions("index_versions", [version])  # the tick's partition request
        # IVF with 4 lists, so that probing 1 list loses recall and the gate can fail
        built = _execute(build_request, "build", root, instance, settings={"factory": "IVF4,Flat"})
        eval_request = _on_success(auto_eval_after_build, built, root, instance)
        assert eval_request.partition_key == version and eval_request.tags[COMMIT_TAG] == first

        starved = {**eval_config, "nprobe": 1, "recall_floor": 1.0}
        failed_gate = _execute(eval_request, "eval", root, instance, evaluation=starved)
        skipped = _on_success(auto_publish_after_eval, failed_gate, root, instance)
        assert isinstance(skipped, dg.SkipReason) and "fails the gate" in skipped.skip_message

        passed = _execute(eval_request, "eval", root, instance, evaluation={**eval_config, "nprobe": 4})
        publish_request = _on_success(auto_publish_after_eval, passed, root, instance)
        # the publish job's compare-and-swap against CURRENT as the tick saw it (nothing published yet)
        publish_config = {"version": version, "expect_current": ""}
        assert publish_request.run_config == {"ops": {"publish_version": {"config": publish_config}}}
        assert root.current() is None
        _execute(publish_request, "publish", root, instance)
        assert root.current() == version

        # An eval nobody asked to auto-publish goes no further; a commit already built is not rebuilt.
        untagged = dg.RunRequest(partition_key=version)
        plain = _execute(untagged, "eval", root, instance, evaluation={**eval_config, "nprobe": 4})
        assert "not an auto-publish eval" in _on_success(auto_publish_after_eval, plain, root, instance).skip_message
        assert "already exists" in tick(root, instance, None, repo=str(path)).skip_message
