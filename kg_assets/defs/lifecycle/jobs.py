"""Stage, publish, rollback and gc as Dagster jobs; each op runs in the `lifecycle` pool (limit 1)."""

from dataclasses import asdict
from typing import Any

import dagster as dg
import pydantic

from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib.lifecycle import Flip, LifecycleRoot
from kg_assets.lib.publishing import publish_gated

LIFECYCLE_POOL = "lifecycle"
_TAGS = {"kind": "lifecycle"}


class StageConfig(dg.Config):
    """Artifacts to copy into a new version (absolute paths)."""

    version: str
    faiss: str
    duckdb: str
    scip: str
    faiss_idmap: str | None = None
    tuning: str | None = None
    extras: dict[str, str] = pydantic.Field(default_factory=dict)


class FlipConfig(dg.Config):
    """Target of a pointer flip. `expect_current`: None skips the compare-and-swap; "" expects nothing current."""

    version: str
    expect_current: str | None = None
    force: bool = False  # publish only: publish even though the version's last eval failed the gate


class GcConfig(dg.Config):
    keep: int = 5
    staging_max_age_hours: float = 24.0
    dry_run: bool = False


@dg.op(pool=LIFECYCLE_POOL)
def stage_version(context: dg.OpExecutionContext, config: StageConfig, lifecycle: LifecycleResource) -> dict:
    """Copy, verify and validate the artifacts into `versions/<version>`."""
    root = lifecycle.get_root()
    vdir = root.stage(
        config.version,
        config.faiss,
        config.duckdb,
        config.scip,
        idmap_path=config.faiss_idmap,
        tuning_path=config.tuning,
        extras=config.extras,
    )
    _register_partition(context, config.version)
    manifest = root.read_manifest(config.version)
    size = sum(entry["size"] for entry in manifest["files"].values())
    context.add_output_metadata(
        {
            "version": config.version,
            "path": dg.MetadataValue.path(str(vdir)),
            "bytes": size,
            "attrs": dg.MetadataValue.json(manifest["attrs"]),
        }
    )
    return {"version": config.version, "path": str(vdir), "bytes": size, "attrs": manifest["attrs"]}


def _register_partition(context: dg.OpExecutionContext, version: str) -> None:
    """Make the version a partition of `index_versions`, so tuning and the UI can address it."""
    if not context.instance.has_dynamic_partition("index_versions", version):
        context.instance.add_dynamic_partitions("index_versions", [version])


def publish_in_run(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    root: LifecycleRoot,
    version: str,
    expect_current: str | None,
    force: bool = False,
) -> tuple[Flip, dict[str, Any]]:
    """Publish through `publishing.publish_gated` from a run (the publish op, or `index_version` with --publish)
    and return the flip with the metadata that records it."""
    published = publish_gated(root, version, expect_current, force=force)
    if published.forced_past:
        context.log.warning(f"publishing despite the eval gate (--force): {published.forced_past}")
    gate = f"failed, forced: {published.forced_past}" if published.forced_past else "not failed"
    return published.flip, {**_flip_metadata(published.flip, root), "eval_gate": gate}


def _flip_metadata(flip: Flip, root: LifecycleRoot) -> dict[str, Any]:
    return {
        "from": flip.from_version or "<none>",
        "to": flip.to_version,
        "changed": flip.changed,
        "root": dg.MetadataValue.path(str(root.root)),
    }


def _flip_op(action: str) -> dg.OpDefinition:
    @dg.op(name=f"{action}_version", pool=LIFECYCLE_POOL, description=f"{action.capitalize()} a complete version.")
    def flip(context: dg.OpExecutionContext, config: FlipConfig, lifecycle: LifecycleResource) -> dict:
        root = lifecycle.get_root()
        if action == "publish":
            result, metadata = publish_in_run(context, root, config.version, config.expect_current, config.force)
        else:
            kwargs: dict[str, Any] = {}
            if config.expect_current is not None:
                kwargs["expect_current"] = config.expect_current or None
            result = root.rollback(config.version, **kwargs)
            metadata = _flip_metadata(result, root)
        _register_partition(context, config.version)
        context.add_output_metadata(metadata)
        return asdict(result)

    return flip


@dg.op(pool=LIFECYCLE_POOL)
def collect_garbage(context: dg.OpExecutionContext, config: GcConfig, lifecycle: LifecycleResource) -> dict:
    """Remove old versions beyond `keep` and abandoned staging directories."""
    report = lifecycle.get_root().gc(
        config.keep, staging_max_age_s=config.staging_max_age_hours * 3600, dry_run=config.dry_run
    )
    context.add_output_metadata(
        {
            "removed_versions": ", ".join(report.removed_versions) or "-",
            "removed_staging": ", ".join(report.removed_staging) or "-",
            "removed_derived": len(report.removed_derived),
            "in_use": ", ".join(report.in_use) or "-",  # kept because a server holds their reader lease
            "dry_run": config.dry_run,
        }
    )
    return asdict(report)


@dg.job(tags=_TAGS, description="Copy artifacts into a new, validated version directory.")
def stage() -> None:
    stage_version()


@dg.job(tags=_TAGS, description="Point CURRENT at a complete version (compare-and-swap, atomic).")
def publish() -> None:
    _flip_op("publish")()


@dg.job(tags=_TAGS, description="Point CURRENT back at an earlier complete version.")
def rollback() -> None:
    _flip_op("rollback")()


@dg.job(tags=_TAGS, description="Remove old versions and abandoned staging directories.")
def gc() -> None:
    collect_garbage()


JOBS = [stage, publish, rollback, gc]
# The op each job runs, by job name (the CLI passes config to it and reads its output).
JOB_OPS = {
    "stage": "stage_version",
    "publish": "publish_version",
    "rollback": "rollback_version",
    "gc": "collect_garbage",
}
