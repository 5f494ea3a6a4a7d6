"""Start exactly one Dagster run on the persistent instance for a verb that changes artifacts.

Dagster is imported here, lazily, so read-only verbs never pay for it.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Any

import kg_assets
from kg_assets.lib.fsutil import atomic_write_bytes, exclusive_lock
from kg_assets.lib.lifecycle import LOCK_TIMEOUT_S

INSTANCE_TEMPLATE = Path(kg_assets.__file__).parent / "dagster.yaml"


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


def run_job(root: Path, job_name: str, op_config: dict[str, Any], *, verbose: bool = False) -> Any:
    """Execute job `job_name` in this process against the instance, return its op's output.

    Engine errors raised inside the op propagate unchanged, so the CLI maps them to exit codes.
    """
    from kg_assets.defs.lifecycle.jobs import JOB_OPS

    home = ensure_dagster_home(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dagster as dg

        from kg_assets.definitions import defs

        job = defs.resolve_job_def(job_name)
        op_name = JOB_OPS[job_name]
        run_config = {
            "ops": {op_name: {"config": op_config}},
            "resources": {"lifecycle": {"config": {"root": str(root)}}},
            "loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}},
        }
        # Two indexctl processes opening a brand-new instance at once race on creating its sqlite schema,
        # so the first open (and the reaping of dead runs) is serialized.
        with exclusive_lock(home / ".kg-instance.lock", LOCK_TIMEOUT_S, f"Dagster instance {home}"):
            instance = dg.DagsterInstance.get()
            reap_dead_runs(instance)
            instance.event_log_storage.get_concurrency_keys()
        with instance:
            result = job.execute_in_process(run_config=run_config, instance=instance, tags=_owner_tags())
            return result.output_for_node(op_name)


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

    An in-process run killed mid-op never releases its `lifecycle` pool slot; without this, every later
    lifecycle run would wait for that slot forever. Returns the ids of the runs reaped.
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
