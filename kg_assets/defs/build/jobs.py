"""The build job (every build asset and check for one version partition) and the ID-map join job."""

from pathlib import Path

import dagster as dg

from kg_assets.defs.build.assets import BUILD_GROUP, index_versions
from kg_assets.defs.build.resources import release_build_lease
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import catalog, idmap

build = dg.define_asset_job(
    "build",
    selection=dg.AssetSelection.groups(BUILD_GROUP),
    partitions_def=index_versions,
    description="Build a version from a repository: chunks -> embeddings -> faiss_index -> ... -> index_version.",
    tags={"kind": "build"},
    hooks={release_build_lease},
)


faiss_idmap_export = dg.AssetSpec(
    "faiss_idmap_export",
    group_name="joins",
    kinds={"parquet"},
    description="An ID map exported by `indexctl export-idmap` to a path outside the versions.",
)
faiss_join = dg.AssetSpec(
    "faiss_join",
    deps=[faiss_idmap_export],
    group_name="joins",
    kinds={"duckdb"},
    description="faiss_idmap_mat, faiss_idmap, v_faiss_join refreshed in a catalog by export-idmap/materialize-join.",
)


class JoinConfig(dg.Config):
    """`index` + `out`: export the index's ID map; `duckdb`: refresh that catalog's join from `idmap` (or `out`)."""

    index: str | None = None
    out: str | None = None
    idmap: str | None = None
    duckdb: str | None = None


@dg.op(out=dg.Out(dict))
def refresh_faiss_join(context: dg.OpExecutionContext, config: JoinConfig, lifecycle: LifecycleResource) -> dict:
    """Export an ID map and/or refresh a catalog's ID-map join; each write is an asset materialization."""
    root = lifecycle.get_root()
    for target, option in ((config.out, "--out"), (config.duckdb, "--duckdb")):
        if target:
            root.check_output_path(Path(target), option)
    outcome: dict = {}
    if config.index and config.out:
        rows = idmap.export_idmap(Path(config.index), Path(config.out))
        outcome.update(exported_rows=rows, out=config.out)
        context.log_event(
            dg.AssetMaterialization(
                asset_key=faiss_idmap_export.key,
                metadata={"path": dg.MetadataValue.path(config.out), "rows": rows, "index": config.index},
            )
        )
    if config.duckdb:
        refresh = catalog.refresh_join(Path(config.duckdb), Path(config.idmap or config.out))
        outcome.update(refreshed=refresh.refreshed, rows=refresh.rows, checksum=refresh.checksum)
        context.log_event(
            dg.AssetMaterialization(
                asset_key=faiss_join.key,
                metadata={
                    "duckdb": dg.MetadataValue.path(config.duckdb),
                    "rows": refresh.rows,
                    "checksum": refresh.checksum,
                    "refreshed": refresh.refreshed,
                },
            )
        )
    return outcome


@dg.job(description="Export a FAISS ID map and/or refresh a catalog's ID-map join (runbook section 4).")
def faiss_join_refresh() -> None:
    refresh_faiss_join()


JOB_OPS = {"faiss_join_refresh": "refresh_faiss_join"}
