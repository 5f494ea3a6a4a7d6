"""Build assets, partitioned by index version; each writes its files into `versions/<v>.staging`."""

import socket
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import dagster as dg

from kg_assets.defs.build.resources import BuildSettings, StagingHold
from kg_assets.defs.lifecycle.jobs import LIFECYCLE_POOL, publish_in_run
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import build, chunking, progress
from kg_assets.lib import catalog as catalog_lib
from kg_assets.lib.errors import NotFoundError
from kg_assets.lib.lexical import LEXICAL_FILE
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, LifecycleRoot

index_versions = dg.DynamicPartitionsDefinition(name="index_versions")
BUILD_GROUP = "build"
CATALOG_TABLES = ("chunks", "modules", "scip_symbols", "scip_occurrences", "faiss_idmap_mat")


def partition_staging(context: dg.AssetExecutionContext, lifecycle: LifecycleResource):
    root = lifecycle.get_root()
    staging = root.staging_dir(context.partition_key)
    if not staging.is_dir():
        raise NotFoundError(
            f"{staging} does not exist: materialize the whole build selection for {context.partition_key}"
        )
    return root, staging


def _file_meta(context: dg.AssetExecutionContext, root: LifecycleRoot, staging: Path, name: str) -> dict:
    """Size of a file the version keeps, and its path once the version is sealed (staging is renamed)."""
    final = root.version_dir(context.partition_key) / name
    return {"path": dg.MetadataValue.path(str(final)), "bytes": (staging / name).stat().st_size}


def _intermediate_meta(path: Path) -> dict:
    """Size of a build intermediate; it is dropped when the version is sealed, so no path is recorded."""
    return {"bytes": path.stat().st_size, "kept": "no (build intermediate, dropped at sealing)"}


@dg.asset(
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"python", "parquet"},
    description="Repository files split into chunks (definition-aligned for Python and every language with a "
    "tree-sitter grammar), with their definitions as symbols and stable chunk ids.",
)
def chunks(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource, hold: StagingHold
) -> dg.MaterializeResult:
    root = lifecycle.get_root()
    staging = root.reset_staging(context.partition_key)
    stats = build.build_chunks(
        settings.repo_path(), staging, settings.load_embedder(), include=settings.include, exclude=settings.exclude
    )
    context.log.info(f"{stats.chunks} chunks from {stats.files} files in {stats.seconds:.1f}s")
    if stats.fallback_languages:
        context.log.warning(f"no tree-sitter grammar loaded for {', '.join(stats.fallback_languages)}: line windows")
    return dg.MaterializeResult(
        metadata={
            "chunks": stats.chunks,
            "files": stats.files,
            "skipped_files": len(stats.skipped),
            "skipped": dg.MetadataValue.json(chunking.skipped_summary(stats.skipped)),
            "languages": dg.MetadataValue.json(stats.languages),
            "line_window_fallback": dg.MetadataValue.json(list(stats.fallback_languages)),
            "repo": settings.repo_path().as_posix(),
            "seconds": round(stats.seconds, 3),
            **_intermediate_meta(staging / build.BUILD_DIR / build.CHUNKS_FILE),
        }
    )


embeddings = dg.AssetSpec(
    "embeddings",
    deps=[chunks],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"numpy"},
    description="L2-normalized chunk vectors; chunks unchanged since the previous version reuse its vectors.",
)
scip_index = dg.AssetSpec(
    "scip_index",
    deps=[chunks],  # after `chunks`, which opens the staging directory for the run
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"scip"},
    description="SCIP index of the repository's Python code (scip-python); reused when the sources are unchanged.",
)


@dg.multi_asset(
    specs=[embeddings, scip_index],
    partitions_def=index_versions,
    can_subset=True,
    description="One step, so scip-python (its own process) indexes while the chunks are embedded.",
)
def embeddings_and_scip_index(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> Iterator[dg.MaterializeResult]:
    root, staging = partition_staging(context, lifecycle)
    repo = settings.repo_path()
    selected = context.selected_asset_keys
    indexing = build.scip_started(root, repo, staging, repo.name or "repo") if scip_index.key in selected else None
    with indexing or nullcontext() as finish_scip:
        if embeddings.key in selected:
            yield _embeddings_result(context, settings, root, staging)
        if finish_scip:
            yield _scip_index_result(finish_scip(), _file_meta(context, root, staging, SCIP_FILE))


def _embeddings_result(
    context: dg.AssetExecutionContext, settings: BuildSettings, root: LifecycleRoot, staging: Path
) -> dg.MaterializeResult:
    embedder = settings.load_embedder()
    previous = build.previous_vectors(root, embedder.fingerprint)
    report = progress.log_progress(context.log.info, "embedded")
    stats = build.build_embeddings(staging, embedder, previous, progress=report)
    rate = stats.embedded / stats.seconds if stats.seconds else 0.0
    return dg.MaterializeResult(
        asset_key=embeddings.key,
        metadata={
            "embedder": embedder.name,
            "fingerprint": embedder.fingerprint,
            "dimension": stats.dim,
            "embedded": stats.embedded,
            "reused": stats.reused,
            "reused_from": stats.reused_from or "-",
            "chunks_per_second": round(rate, 1),
            "seconds": round(stats.seconds, 3),
            **_intermediate_meta(staging / build.BUILD_DIR / build.EMBEDDINGS_FILE),
        },
    )


def _scip_index_result(stats: build.ScipStats, file_meta: dict) -> dg.MaterializeResult:
    summary = stats.summary
    return dg.MaterializeResult(
        asset_key=scip_index.key,
        metadata={
            "documents": summary.documents,
            "occurrences": summary.occurrences,
            "definitions": summary.definitions,
            "tool": f"{summary.tool_name} {summary.tool_version}",
            "sources_digest": stats.digest[:12],
            "reused_from": stats.reused_from or "-",
            "seconds": round(stats.seconds, 3),
            "waited_seconds": round(stats.waited, 3),
            **file_meta,
        },
    )


@dg.asset(
    deps=[chunks],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"numpy"},
    description="BM25 index over the chunks' code-aware tokens (text, path, defined names): lexical.npz.",
)
def lexical_index(context: dg.AssetExecutionContext, lifecycle: LifecycleResource) -> dg.MaterializeResult:
    root, staging = partition_staging(context, lifecycle)
    stats = build.build_lexical(staging)
    return dg.MaterializeResult(
        metadata={
            "chunks": stats.chunks,
            "terms": stats.terms,
            "seconds": round(stats.seconds, 3),
            **_file_meta(context, root, staging, LEXICAL_FILE),
        }
    )


@dg.asset(
    deps=[embeddings],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"faiss"},
    description="FAISS inner-product index over the chunk vectors, ids = chunk_id (IndexIDMap2).",
)
def faiss_index(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging = partition_staging(context, lifecycle)
    stats = build.build_faiss(staging, settings.factory, settings.seed)
    return dg.MaterializeResult(
        metadata={
            "factory": stats.factory,
            "ntotal": stats.ntotal,
            "dimension": stats.summary.dim,
            "metric": stats.summary.metric,
            "train_size": stats.train_size,
            "train_seconds": round(stats.train_seconds, 3),
            "add_seconds": round(stats.add_seconds, 3),
            **_file_meta(context, root, staging, FAISS_FILE),
        }
    )


@dg.asset(
    deps=[faiss_index],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"parquet"},
    description="FAISS row -> chunk_id map exported from the index (faiss_idmap.parquet).",
)
def faiss_idmap(context: dg.AssetExecutionContext, lifecycle: LifecycleResource) -> dg.MaterializeResult:
    root, staging = partition_staging(context, lifecycle)
    rows = build.build_idmap(staging)
    return dg.MaterializeResult(metadata={"rows": rows, **_file_meta(context, root, staging, IDMAP_FILE)})


@dg.asset(
    deps=[chunks, embeddings, scip_index, faiss_idmap],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"duckdb"},
    description="Hermetic DuckDB catalog: chunks with vectors, modules, SCIP symbols, ID-map join (v_faiss_join).",
)
def catalog(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging = partition_staging(context, lifecycle)
    embedder = settings.load_embedder()
    meta = {
        "version": context.partition_key,
        "repo": settings.repo_path().as_posix(),
        "embedder": embedder.name,
        "embedder_spec": settings.embedder,
        "embedder_fingerprint": embedder.fingerprint,
        "embedder_dim": str(embedder.dim),
        "built_on": socket.gethostname(),
    }
    t0 = time.perf_counter()
    build.build_catalog(staging, meta)
    seconds = time.perf_counter() - t0
    counts = catalog_lib.row_counts(staging / CATALOG_FILE, CATALOG_TABLES)
    return dg.MaterializeResult(
        metadata={
            **counts,
            "dimension": embedder.dim,
            "seconds": round(seconds, 3),
            **_file_meta(context, root, staging, CATALOG_FILE),
        }
    )


@dg.asset(
    deps=[catalog, faiss_index, faiss_idmap, scip_index, lexical_index],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"json"},
    pool=LIFECYCLE_POOL,  # it may publish, which serializes with the lifecycle jobs
    description="The sealed version: intermediates dropped, manifest written, staging renamed to versions/<v>.",
)
def index_version(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging = partition_staging(context, lifecycle)
    embedder = settings.load_embedder()
    attrs = {
        "embedder_name": embedder.name,
        "embedder_fingerprint": embedder.fingerprint,
        "repo": settings.repo_path().as_posix(),
    }
    vdir = build.finalize(root, context.partition_key, staging, embedder.dim, attrs)
    manifest = root.read_manifest(context.partition_key)
    files = manifest["files"]
    table = ["| file | bytes | mutable |", "| --- | ---: | --- |"]
    table += [
        f"| {name} | {e['size']:,} | {'yes' if e.get('mutable') else 'no'} |" for name, e in sorted(files.items())
    ]
    metadata = {
        "path": dg.MetadataValue.path(str(vdir)),
        "bytes": sum(e["size"] for e in files.values()),
        "files": dg.MetadataValue.md("\n".join(table)),
        "attrs": dg.MetadataValue.json(manifest["attrs"]),
        # Long-running readers follow CURRENT: once this version is published they switch to it within seconds.
        "serve": dg.MetadataValue.md(
            f"Once published: `indexctl --root {root.root} serve` (HTTP on 127.0.0.1:8765: /search, /health, "
            f"/chunks/ID) or `indexctl --root {root.root} mcp` (MCP on stdio: search_code, get_chunk, find_symbol)"
        ),
    }
    if settings.publish:  # the publish job's own path: eval gate, then CAS against CURRENT as of the build's start
        _, published = publish_in_run(context, root, context.partition_key, settings.expect_current)
        metadata.update(published_from=published["from"], eval_gate=published["eval_gate"])
    return dg.MaterializeResult(metadata=metadata)


BUILD_ASSETS = [chunks, embeddings_and_scip_index, lexical_index, faiss_index, faiss_idmap, catalog, index_version]
