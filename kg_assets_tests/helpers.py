"""Helpers shared by test modules and conftest files (never imported from a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg

from kg_assets.definitions import defs
from kg_assets.lib.lifecycle import LifecycleRoot

REPO = Path(__file__).resolve().parents[1]
SCIP_PYTHON = REPO / "node_modules" / ".bin" / "scip-python"


def run_build(
    root: LifecycleRoot,
    repo: Path,
    version: str,
    instance: dg.DagsterInstance,
    assets: list[str] | None = None,
    **settings: Any,
) -> Any:
    """One in-process run of the build job for `version` (only `assets` of it when given); `settings` override
    BuildSettings (e.g. factory)."""
    instance.add_dynamic_partitions("index_versions", [version])
    rooted = {"config": {"root": str(root.root)}}
    config = {"repo": str(repo), **settings}
    return defs.resolve_job_def("build").execute_in_process(
        partition_key=version,
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
        run_config={"resources": {"lifecycle": rooted, "settings": {"config": config}}},
    )
