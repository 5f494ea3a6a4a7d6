"""The blocking gate on the catalog: the version is sealed only when index, ID map and catalog agree."""

import dagster as dg

from kg_assets.defs.build.assets import catalog, index_versions, partition_staging
from kg_assets.defs.build.resources import BuildSettings
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import build


@dg.asset_check(asset=catalog, blocking=True, partitions_def=index_versions)
def catalog_consistent(
    context: dg.AssetCheckExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.AssetCheckResult:
    """Dimensions (embedder, index, catalog) agree; ntotal = chunk rows = ID-map rows; the same unique ids
    everywhere; no NaN vectors; every chunk's text matches its hash."""
    root, staging = partition_staging(context, lifecycle)
    work = settings.work_path(root, context.partition_key)
    results = build.check_staging(staging, work, settings.load_embedder().dim)
    return dg.AssetCheckResult(
        passed=all(r.passed for r in results),
        metadata={r.name: dg.MetadataValue.text(("ok: " if r.passed else "FAILED: ") + r.detail) for r in results},
    )
