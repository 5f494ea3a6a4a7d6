"""Start exactly one Dagster run on the persistent instance for a verb that changes artifacts.

Dagster is imported here, lazily, so read-only verbs never pay for it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import kg_assets
from kg_assets.lib.fsutil import atomic_write_bytes

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

    ensure_dagster_home(root)
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
        tags = {"kg/source": "indexctl", "kg/pid": str(os.getpid())}
        with dg.DagsterInstance.get() as instance:
            result = job.execute_in_process(run_config=run_config, instance=instance, tags=tags)
            return result.output_for_node(op_name)
