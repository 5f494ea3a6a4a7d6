"""Start exactly one Dagster run on the persistent instance for a verb that changes artifacts.

Dagster is imported here, lazily, so read-only verbs never pay for it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import kg_assets
from kg_assets.lib import errors, progress
from kg_assets.lib.fsutil import atomic_write_bytes, exclusive_lock
from kg_assets.lib.lifecycle import LOCK_TIMEOUT_S, LifecycleRoot

INSTANCE_TEMPLATE = Path(kg_assets.__file__).parent / "dagster.yaml"
POOL_WAIT_S = 5.0  # how long a lifecycle verb waits for the pool's slot by default (`indexctl --wait`)
_ENGINE_ERRORS = {
    cls.__name__: cls for cls in (errors.UsageError, errors.NotFoundError, errors.ValidationError, errors.ConflictError)
}


def ensure_dagster_home(root: Path) -> Path:
    """Use $DAGSTER_HOME when set; else `<root>/.dagster`, seeded with the repository's `dagster.yaml`."""
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"])
    home = root / ".dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        atomic_write_bytes(config, INSTANCE_TEMPLATE.read_bytes())
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def run_job(
    root: Path,
    job_name: str,
    run_config: dict[str, Any],
    *,
    partition_key: str | None = None,
    verbose: bool = False,
    wait: float = POOL_WAIT_S,
    resume: bool = False,
) -> Any:
    """Execute job `job_name` in this process against the instance and return its result.

    Resources get `root`; a partition key is registered in `index_versions` first. A job whose every op is in a
    concurrency pool (the lifecycle jobs) first waits up to `wait` seconds for a free slot. A failed run raises
    the engine error its step raised (so the CLI maps it to an exit code), or ValidationError for a failed
    blocking check. With `resume` (the build job), `run_config` is ignored: the partition's failed run is
    re-executed from its failure with its own config (see `failed_build_run`).
    """
    home = ensure_dagster_home(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from kg_assets.definitions import defs

        job = defs.resolve_job_def(job_name)
        # Two indexctl processes opening a brand-new instance at once race on creating its sqlite schema,
        # so the first open (and the reaping of dead runs) is serialized.
        with exclusive_lock(home / ".kg-instance.lock", LOCK_TIMEOUT_S, f"Dagster instance {home}"):
            instance = open_instance(home)
            reap_dead_runs(instance)
            release_ended_leases(instance, LifecycleRoot(root))
            instance.event_log_storage.get_concurrency_keys()
            if partition_key is not None:
                instance.add_dynamic_partitions("index_versions", [partition_key])
        parent = failed_build_run(instance, root, partition_key) if resume and partition_key else None
        if parent is not None:
            run_config = {k: v for k, v in parent.run_config.items() if k not in ("execution", "loggers")}
        resources = {"lifecycle": {"config": {"root": str(root)}}}
        used = {key for key in resources if key in job.resource_defs}
        full_config = {
            **run_config,
            "resources": {**{k: v for k, v in resources.items() if k in used}, **run_config.get("resources", {})},
            "loggers": {"console": {"config": {"log_level": "INFO" if verbose else "CRITICAL"}}},
        }
        pools = {getattr(node.definition, "pool", None) for node in job.nodes}  # a graph node has none
        if len(pools) == 1 and None not in pools:
            wait_for_pool(instance, pools.pop(), wait)
        progress.claim_terminal()  # the step's stderr will be redirected into Dagster's compute logs
        with instance:
            try:
                result = _execute(job, full_config, instance, partition_key, parent.run_id if parent else None)
            except Exception as exc:  # the run's own events could not be written (sqlite names no file)
                if not _disk_full(exc):
                    raise
                raise InstanceUnavailable(
                    f"the Dagster instance at {home} cannot record the {job_name} run: its disk is full"
                ) from exc
            if job_name == "build" and not result.success:  # a step that started after a failed one retook it
                release_ended_leases(instance, LifecycleRoot(root))
        if not result.success:
            raise _failure(result)
        return result


def _execute(
    job: Any, run_config: dict[str, Any], instance: Any, partition_key: str | None, resume_from: str | None = None
) -> Any:
    """Run `job` in this process; the build job with $KG_SUBMIT=1 submitted to the instance instead (its run
    coordinator and launcher, or its queue and daemon, start it), or with $KG_EXECUTOR set (`multiprocess`,
    `celery`) run here under that executor (its shard steps in other processes or on Celery workers). A build
    run `resume_from` names is re-executed from its failure here (under $KG_EXECUTOR's executor, else in this
    process): one new run that runs only its failed and skipped steps and reads the other steps' outputs. Either
    way the run is waited for here and its result returned."""
    if resume_from is None and job.name == "build" and os.environ.get("KG_SUBMIT") == "1":
        return SubmittedRun(instance, _submit(job.name, run_config, partition_key))
    if resume_from is None and (job.name != "build" or not os.environ.get("KG_EXECUTOR")):
        return job.execute_in_process(
            run_config=run_config,
            instance=instance,
            tags=_owner_tags(),
            partition_key=partition_key,
            raise_on_error=False,
        )
    import dagster as dg

    from kg_assets.definitions import build_job, execution_config

    tags = {**_owner_tags(), "dagster/partition": partition_key}
    config = {**run_config, **(execution_config() if os.environ.get("KG_EXECUTOR") else {})}
    again = dg.ReexecutionOptions.from_failure(resume_from, instance) if resume_from else None
    with dg.execute_job(
        dg.reconstructable(build_job), instance, run_config=config, tags=tags, reexecution_options=again
    ) as result:
        return result


def failed_build_run(instance: Any, root: Path, version: str) -> Any:
    """The latest build run of `version` on `root`, which `indexctl build --resume` re-executes: it must have
    failed or been cancelled (a run whose indexctl died counts once the dead-run reaper has marked it failed).
    NotFoundError when there is none, ConflictError while the latest one is still going."""
    import dagster as dg

    runs = instance.get_runs(filters=dg.RunsFilter(job_name="build", tags={"dagster/partition": version}))
    ours = [r for r in runs if _configured_root(r) in (None, str(root))]
    if not ours:
        raise errors.NotFoundError(f"no build run of {version} to resume; start one with `indexctl build {version}`")
    latest = ours[0]
    if latest.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
        return latest
    if not latest.is_finished:
        raise errors.ConflictError(f"build run {latest.run_id[:8]} of {version} is still {latest.status.value.lower()}")
    raise errors.NotFoundError(f"the last build run of {version} ({latest.run_id[:8]}) did not fail: nothing to resume")


def _configured_root(run: Any) -> str | None:
    """The lifecycle root a run's config names (None: the resource's default, from the environment)."""
    return run.run_config.get("resources", {}).get("lifecycle", {}).get("config", {}).get("root")


def _submit(job_name: str, run_config: dict[str, Any], partition_key: str | None) -> str:
    """Submit a run of `job_name` to the instance at $DAGSTER_HOME through `dagster job launch` (the instance's
    run coordinator: launched at once, or queued for `dagster-daemon run`); its run id. The run carries no owner
    tags: it does not die with this process, so the dead-run reaper leaves it alone."""
    import uuid

    run_id = str(uuid.uuid4())
    config = {k: v for k, v in run_config.items() if k != "loggers"}
    if os.environ.get("KG_EXECUTOR"):
        from kg_assets.definitions import execution_config

        config.update(execution_config())
    tags = {"kg/source": "indexctl-submit", **({"dagster/partition": partition_key} if partition_key else {})}
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "job", "launch", "-m", "kg_assets.definitions", "-j", job_name, "--run-id", run_id]
    command += ["--config-json", json.dumps(config), "--tags", json.dumps(tags)]
    launched = subprocess.run(command, capture_output=True, text=True)
    if launched.returncode != 0:
        raise errors.KgError(f"dagster job launch failed: {(launched.stderr.strip().splitlines() or ['?'])[-1]}")
    return run_id


class SubmittedRun:
    """The finished run of a submitted job, read back from the instance: what a caller reads of an in-process
    result (success, events, materializations, check evaluations). The constructor waits for the run to end."""

    def __init__(self, instance: Any, run_id: str, poll: float = 0.5, note_after: float = 10.0) -> None:
        started = time.monotonic()
        while not (run := instance.get_run_by_id(run_id)) or not run.is_finished:
            if note_after and run and run.status.value == "QUEUED" and time.monotonic() - started > note_after:
                home = os.environ.get("DAGSTER_HOME")
                print(
                    f"indexctl: run {run_id} is queued: the daemon starts it (dagster-daemon run, or dagster dev, "
                    f"with DAGSTER_HOME={home}); waiting",
                    file=sys.stderr,
                )
                note_after = 0.0
            time.sleep(poll)
        self.run_id = run_id
        self.success = run.is_success
        self.all_events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]

    def get_asset_materialization_events(self) -> list[Any]:
        return [e for e in self.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]

    def get_asset_check_evaluations(self) -> list[Any]:
        return [e.event_specific_data for e in self.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]


class InstanceUnavailable(errors.KgError):
    """The Dagster instance cannot record a run because its disk is full; nothing was started."""


def open_instance(home: Path) -> Any:
    """The Dagster instance at `home` (= $DAGSTER_HOME); InstanceUnavailable when its disk is full."""
    import dagster as dg

    try:
        return dg.DagsterInstance.get()
    except Exception as exc:
        if not _disk_full(exc):
            raise
        raise InstanceUnavailable(f"the Dagster instance at {home} cannot record runs: its disk is full") from exc


def _disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` or its cause is ENOSPC, or sqlite's report of it."""
    while exc is not None:
        if getattr(exc, "errno", None) == errno.ENOSPC or any(
            text in str(exc) for text in ("disk I/O error", "database or disk is full")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_op_job(
    root: Path, job_name: str, op_config: dict[str, Any], *, verbose: bool = False, wait: float = POOL_WAIT_S
) -> Any:
    """Run a single-op job (the lifecycle jobs) with `op_config` and return that op's output."""
    from kg_assets.defs.build.jobs import JOB_OPS as BUILD_JOB_OPS
    from kg_assets.defs.lifecycle.jobs import JOB_OPS

    op_name = {**JOB_OPS, **BUILD_JOB_OPS}[job_name]
    result = run_job(root, job_name, {"ops": {op_name: {"config": op_config}}}, verbose=verbose, wait=wait)
    return result.output_for_node(op_name)


def run_build(
    root: Path, version: str, repo: Path | None, *, verbose: bool = False, resume: bool = False, **settings: Any
) -> dict[str, Any]:
    """Materialize the build assets for `version` (one run) and summarize what they recorded. With `resume`, the
    version's failed build run is re-executed from its failure instead (its own settings; `repo` and `settings`
    are not used), and the summary includes what the earlier runs materialized."""
    config = {} if resume else {"resources": {"settings": {"config": {"repo": str(repo), **settings}}}}
    try:
        result = run_job(root, "build", config, partition_key=version, verbose=verbose, resume=resume)
    except errors.KgError as exc:
        if type(exc) is not errors.KgError:  # an engine error of its own family says what to do
            raise
        raise errors.KgError(
            f"{exc}; once fixed, `indexctl build {version} --resume` re-runs the failed steps"
        ) from exc
    events = [*(_ancestor_events(result.run_id) if resume else []), *result.all_events]
    meta = {
        event.asset_key.to_user_string(): {k: v.value for k, v in event.materialization.metadata.items()}
        for event in events
        if event.event_type_value == "ASSET_MATERIALIZATION"
    }
    seconds = {
        event.step_key: event.event_specific_data.duration_ms / 1000
        for event in events
        if event.event_type_value == "STEP_SUCCESS"
    }
    sealed = meta["index_version"]
    return {
        "version": version,
        "path": str(sealed["path"]),
        "bytes": sealed["bytes"],
        "attrs": sealed["attrs"].data if hasattr(sealed["attrs"], "data") else sealed["attrs"],
        "chunks": meta["chunks"]["chunks"],
        "files": meta["chunks"]["files"],
        "languages": meta["chunks"]["languages"],
        "skipped": meta["chunks"]["skipped"],
        "line_window_fallback": meta["chunks"]["line_window_fallback"],
        "embedded": meta["embeddings"]["embedded"],
        "reused": meta["embeddings"]["reused"],
        "shards": meta["embeddings"]["shards"],
        "seconds": seconds,
        "published_from": sealed.get("published_from"),
    }


def _ancestor_events(run_id: str) -> list[Any]:
    """The Dagster events of the runs a re-executed run descends from, its root run first."""
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        ancestors = []
        run = instance.get_run_by_id(run_id)
        while run.parent_run_id:
            run = instance.get_run_by_id(run.parent_run_id)
            ancestors.append(run.run_id)
        return [e.dagster_event for r in reversed(ancestors) for e in instance.all_logs(r) if e.dagster_event]


def _failure(result: Any) -> Exception:
    """The engine error behind a failed run, rebuilt from its step failure (or a failed blocking check)."""
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    if failed:
        details = [
            f"{e.check_name}: {value.value.removeprefix('FAILED: ')}"
            for e in failed
            for key, value in e.metadata.items()
            if str(value.value).startswith("FAILED")
        ] or [e.check_name for e in failed]
        return errors.ValidationError("blocking check failed, version not sealed: " + "; ".join(details))
    failures = [e for e in result.all_events if e.event_type_value in ("STEP_FAILURE", "RESOURCE_INIT_FAILURE")]
    for event in failures:
        error, chain = event.event_specific_data.error, []
        while error is not None:
            if error.cls_name == "DagsterExecutionInterruptedError":  # Dagster's form of our SIGINT/SIGTERM
                return errors.Interrupted(f"a signal stopped {event.step_key or 'the run'}")
            if error.cls_name in _ENGINE_ERRORS:
                message = error.message.strip().split(": ", 1)[-1]
                return _ENGINE_ERRORS[error.cls_name](message)
            chain.append(error)
            error = error.cause
        cause = chain[-1]  # the innermost error names what went wrong (ENOSPC, ELOOP, ...) and its path
        where = f"step {event.step_key}" if event.step_key else "resource initialization"
        return errors.KgError(
            f"{where} failed: {_crash(result, event.step_key) or cause.message.strip().splitlines()[0]}"
        )
    return errors.KgError("the Dagster run failed; re-run with -v for its log")


def _crash(result: Any, step_key: str | None) -> str | None:
    """How a step's process died, as the multiprocess executor reported it (its failure says only that it
    crashed): `its process was terminated by signal 9 (SIGKILL)`; None when it did not crash."""
    for event in result.all_events:
        if event.event_type_value == "ENGINE_EVENT" and event.step_key == step_key:
            found = re.search(
                r"(was terminated by signal \d+ \(\w+\)|unexpectedly exited with code -?\d+)", event.message or ""
            )
            if found:
                return f"its process {found.group(1)}"
    return None


def wait_for_pool(instance: Any, pool: str, wait: float) -> None:
    """Return once `pool` has a free slot, polling with back-off (0.1 s doubling to 2 s); ConflictError naming
    the run that holds the slot after `wait` seconds. Says on stderr whom it waits for; the wait is ours, so SIGINT
    and SIGTERM end it."""
    deadline = time.monotonic() + wait
    pause = 0.1
    while True:
        info = instance.event_log_storage.get_concurrency_info(pool)
        limit = info.limit if info.limit is not None else info.slot_count
        if not limit or info.active_slot_count < limit:
            return
        holders = ", ".join(_describe_run(instance, s.run_id, s.step_key) for s in info.claimed_slots)
        if time.monotonic() >= deadline:
            raise errors.ConflictError(
                f"the {pool} pool is busy: {holders} holds its slot; retry when it ends, or wait longer with "
                f"`indexctl --wait SECONDS`"
            )
        if pause == 0.1:
            print(f"indexctl: waiting up to {wait:g} s for the {pool} pool: {holders} holds it", file=sys.stderr)
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(pause * 2, 2.0)


def _describe_run(instance: Any, run_id: str, step_key: str) -> str:
    run = instance.get_run_by_id(run_id)
    owner = f", indexctl pid {run.tags['kg/pid']}" if run and "kg/pid" in run.tags else ""
    return f"run {run_id[:8]} ({run.job_name if run else 'unknown job'} step {step_key}{owner})"


def _process_started(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_tags() -> dict[str, str]:
    """Tags naming the process that runs a job, so a later indexctl can tell whether it died."""
    pid = os.getpid()
    return {
        "kg/source": "indexctl",
        "kg/host": socket.gethostname(),
        "kg/pid": str(pid),
        "kg/pid_started": _process_started(pid) or "",
    }


def reap_dead_runs(instance: Any) -> list[str]:
    """Mark runs of indexctl processes on this host that died (SIGKILL, power loss) as failed.

    An in-process run killed mid-op never releases its pool slot; without this, every later lifecycle run
    would wait for that slot forever. Returns the ids of the runs reaped.
    """
    import dagster as dg

    reaped = []
    active = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=active, tags={"kg/source": "indexctl"}))
    for run in runs:
        if run.tags.get("kg/host") != socket.gethostname():
            continue
        pid = int(run.tags.get("kg/pid", "0"))
        if pid and _process_started(pid) == run.tags.get("kg/pid_started"):
            continue  # that very process is still running
        instance.report_run_failed(run, message=f"indexctl process {pid} died before the run finished")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        reaped.append(run.run_id)
    return reaped


def release_ended_leases(instance: Any, root: LifecycleRoot) -> list[str]:
    """Release the build leases of runs that ended (a reaped or failed run whose cleanup never ran); the
    versions whose lease was released."""
    released = []
    for version, lease in root.build_leases().items():
        run = instance.get_run_by_id(lease["run_id"])
        if (run is None or run.is_finished) and root.release_build_lease(version, lease["run_id"]):
            released.append(version)
    return released
