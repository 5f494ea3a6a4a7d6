"""Build assets, partitioned by index version; each writes its files into `versions/<v>.staging` and its
intermediates into the version's step-output location (`BuildSettings.work_dir`).

Embedding and encoding fan out inside the build run: the graph-backed `embeddings`/`faiss_index` asset plans the
shards (a dynamic output per shard), embeds each shard in its own step, trains the one index on the collected
shards, encodes each shard into a copy of it in its own step, and merges them. Every step holds the version's
build lease (a file on the lifecycle root), so any executor (in-process, multiprocess, Celery, Kubernetes) runs
them under the same lease.

The SCIP indexers (child processes) overlap the embedding under every executor: under multiprocess, Celery or
Kubernetes `scip_index` is a step of its own beside the embed steps; the in-process executor runs one step at a
time, so there the first embed step runs the indexers beside its embedding (start and wait in one step, one
process) and `scip_index`, ordered after the embed steps by its priority, reports what they made.
"""

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

from kg_assets.defs.build.resources import BuildSettings, hold_build_lease
from kg_assets.defs.lifecycle.jobs import LIFECYCLE_POOL, publish_in_run
from kg_assets.defs.lifecycle.resources import LifecycleResource
from kg_assets.lib import build, chunking, progress
from kg_assets.lib import catalog as catalog_lib
from kg_assets.lib.errors import KgError, NotFoundError
from kg_assets.lib.lexical import LEXICAL_FILE
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, LifecycleRoot
from kg_assets.lib.workdir import WorkPath

index_versions = dg.DynamicPartitionsDefinition(name="index_versions")
BUILD_GROUP = "build"
CATALOG_TABLES = ("chunks", "modules", "scip_symbols", "scip_occurrences", "faiss_idmap_mat")
OUTPUTS = "build_outputs"  # the IO manager of values passed between build steps (see BuildOutputs)
# The executor of the definitions (`definitions.executor`): in-process unless the run config asks for multiprocess.
DEFAULT_EXECUTOR = "in_process_or_multiprocess"


def partition_staging(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, lifecycle: LifecycleResource
) -> tuple[LifecycleRoot, Path]:
    root = lifecycle.get_root()
    staging = root.staging_dir(context.partition_key)
    if not staging.is_dir():
        raise NotFoundError(
            f"{staging} does not exist: materialize the whole build selection for {context.partition_key}"
        )
    return root, staging


def build_step(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> tuple[LifecycleRoot, Path, WorkPath]:
    """What a build step after `chunks` works on: the root, the staging directory and the step-output
    location, with the version's build lease held by this run."""
    root, staging = partition_staging(context, lifecycle)
    hold_build_lease(context, root, context.partition_key)
    return root, staging, settings.work_path(root, context.partition_key)


def _file_meta(context: dg.AssetExecutionContext, root: LifecycleRoot, staging: Path, name: str) -> dict:
    """Size of a file the version keeps, and its path once the version is sealed (staging is renamed)."""
    final = root.version_dir(context.partition_key) / name
    return {"path": dg.MetadataValue.path(str(final)), "bytes": (staging / name).stat().st_size}


def _intermediate_meta(path: WorkPath) -> dict:
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
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root = lifecycle.get_root()
    hold_build_lease(context, root, context.partition_key)  # the first step takes the lease; the rest keep it
    staging = root.reset_staging(context.partition_key)  # and an abandoned attempt's step outputs elsewhere
    work = settings.new_work_path(root, context.partition_key)
    stats = build.build_chunks(
        settings.repo_path(),
        staging,
        work,
        settings.load_embedder(),
        include=settings.include,
        exclude=settings.exclude,
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
            **_intermediate_meta(work / build.CHUNKS_FILE),
        }
    )


def runs_in_one_process(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> bool:
    """Whether the run executes all its steps in this process, one at a time: Dagster's in-process executor
    (`execute_in_process`), or `DEFAULT_EXECUTOR` in its default in-process configuration."""
    executor = context.job_def.executor_def.name
    if executor in ("execute_in_process_executor", "in_process"):
        return True
    execution = (context.run_config.get("execution") or {}).get("config") or {}
    return executor == DEFAULT_EXECUTOR and "multiprocess" not in execution


def scip_project(settings: BuildSettings) -> str:
    """The project name the SCIP indexers are given: the repository directory's name."""
    return settings.repo_path().name or "repo"


def scip_beside_embedding(
    context: dg.OpExecutionContext, settings: BuildSettings, root: LifecycleRoot, work: WorkPath, stack: ExitStack
) -> Callable[[], None]:
    """In a run whose steps all run in this process one at a time, start the SCIP indexers (child processes) for
    the caller to embed meanwhile; returns what waits for them and records their result for `scip_index`, which
    runs after the embed steps there (its lower priority) and reports it. Under any other executor, where
    `scip_index` is a step of its own beside the embed steps, or in a run without that step, this does nothing.
    It never fails the caller: an indexer that fails here is run again by `scip_index`, which fails with its
    error."""
    steps = context.run.step_keys_to_execute  # None: all (a subset or re-execution names its steps)
    if (
        not runs_in_one_process(context)
        or (steps is not None and "scip_index" not in steps)
        or not settings.scip_indexers()
    ):
        return lambda: None
    staging = root.staging_dir(context.partition_key)
    try:
        finish = stack.enter_context(
            build.scip_started(root, staging, work, scip_project(settings), settings.scip_indexers())
        )
    except KgError as exc:
        context.log.warning(f"SCIP indexers not started beside embedding ({exc}); scip_index runs them")
        return lambda: None

    def done() -> None:
        t0 = time.perf_counter()
        try:
            finish()
        except KgError as exc:
            context.log.warning(f"SCIP indexers failed beside embedding ({exc}); scip_index runs them again")
        else:
            context.log.info(f"SCIP indexers done beside embedding; waited {time.perf_counter() - t0:.1f}s for them")

    return done


@dg.asset(
    deps=[chunks],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"scip"},
    # In-process, the steps ready at once run by priority: this one after the embed steps, whose first one has
    # already run the indexers beside its embedding (`scip_beside_embedding`). Other executors run it at once.
    op_tags={"dagster/priority": "-1"},
    description="SCIP index of the repository (one indexer per language that has one: scip-python, "
    "scip-typescript, and scip-go, scip-java, rust-analyzer when on the PATH), merged into index.scip; each "
    "indexer's part is reused when its sources are unchanged.",
)
def scip_index(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging, work = build_step(context, settings, lifecycle)
    stats = build.recorded_scip(work)  # run beside the embedding already (an in-process run)
    if stats is None:
        with build.scip_started(root, staging, work, scip_project(settings), settings.scip_indexers()) as finish:
            stats = finish()
        if settings.kind == "fast":
            context.log.info(f"fast version: SCIP deferred to {settings.full_version or 'the full version'}")
    for failed in (r for r in stats.indexers if r.error):
        context.log.warning(f"{failed.name} failed, its languages have no SCIP data: {failed.error}")
    summary = stats.summary
    rows = ["| indexer | tool | documents | sources | reused from | error |", "| --- | --- | ---: | --- | --- | --- |"]
    rows += [
        f"| {r.name} | {r.tool} {r.version} | {r.documents} | {r.digest[:12]} | {r.reused_from or '-'} | "
        f"{r.error or '-'} |"
        for r in stats.indexers
    ]
    return dg.MaterializeResult(
        metadata={
            "documents": summary.documents,
            "occurrences": summary.occurrences,
            "definitions": summary.definitions,
            "tool": f"{summary.tool_name} {summary.tool_version}",
            "indexers": dg.MetadataValue.md("\n".join(rows)),
            "reused_from": ", ".join(sorted({r.reused_from for r in stats.indexers if r.reused_from})) or "-",
            "deferred_to": (settings.full_version or "the full version") if settings.kind == "fast" else "-",
            "seconds": round(stats.seconds, 3),
            "waited_seconds": round(stats.waited, 3),
            **_file_meta(context, root, staging, SCIP_FILE),
        }
    )


@dg.op(ins={"chunks": dg.In(dg.Nothing)}, out=dg.DynamicOut(int, io_manager_key=OUTPUTS))
def plan_shards(
    context: dg.OpExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> Iterator[dg.DynamicOutput[int]]:
    """Cut the chunks into shards at file boundaries (`BuildSettings.shards`, 0 = by chunk count and cores)."""
    _, _, work = build_step(context, settings, lifecycle)
    ranges = build.plan_shards(work, settings.shards)
    context.log.info(f"{len(ranges)} shard(s): {[end - start for start, end in ranges]} chunks")
    for shard in range(len(ranges)):
        yield dg.DynamicOutput(shard, mapping_key=f"s{shard}")


@dg.op(out=dg.Out(dict, io_manager_key=OUTPUTS))
def embed_shard(
    context: dg.OpExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource, shard: int
) -> dict:
    """Embed one shard's chunks (reusing an earlier version's vectors of unchanged chunks); in-process, shard 0
    runs the SCIP indexers meanwhile (`scip_beside_embedding`)."""
    root, _, work = build_step(context, settings, lifecycle)
    embedder = settings.load_embedder()
    report = progress.log_progress(context.log.info, f"shard {shard} embedded")
    with ExitStack() as stack:
        scip_done = scip_beside_embedding(context, settings, root, work, stack) if shard == 0 else lambda: None
        stats = build.embed_shard(root, work, shard, embedder, progress=report)
        scip_done()
    return {
        "embedder": embedder.name,
        "fingerprint": embedder.fingerprint,
        "dimension": stats.dim,
        "embedded": stats.embedded,
        "reused": stats.reused,
        "reused_from": stats.reused_from,
        "seconds": stats.seconds,
    }


@dg.op(out=dg.Out(dict, io_manager_key=OUTPUTS))
def gather_embeddings(shards: list[dict]) -> dg.Output:
    """The embeddings asset's figures, summed over its shards."""
    embedded = sum(s["embedded"] for s in shards)
    seconds = max(s["seconds"] for s in shards)
    return dg.Output(
        {"embedded": embedded},
        metadata={
            "embedder": shards[0]["embedder"],
            "fingerprint": shards[0]["fingerprint"],
            "dimension": shards[0]["dimension"],
            "embedded": embedded,
            "reused": sum(s["reused"] for s in shards),
            "reused_from": next((s["reused_from"] for s in shards if s["reused_from"]), None) or "-",
            "shards": len(shards),
            "chunks_per_second": round(embedded / seconds, 1) if seconds else 0.0,
            "seconds": round(seconds, 3),
        },
    )


@dg.graph_asset(
    ins={"chunks": dg.AssetIn(dagster_type=dg.Nothing)},
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"numpy"},
    description="L2-normalized chunk vectors, embedded shard by shard (one step each); chunks unchanged since the "
    "previous version reuse its vectors.",
)
def embeddings(chunks):
    return gather_embeddings(plan_shards(chunks).map(embed_shard).collect())


@dg.op(ins={"embeddings": dg.In(dg.Nothing)}, out=dg.DynamicOut(dict, io_manager_key=OUTPUTS))
def train_shared_index(
    context: dg.OpExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> Iterator[dg.DynamicOutput[dict]]:
    """Train the one index on the unsharded build's sample, gathered from the shards; then one output per shard."""
    _, _, work = build_step(context, settings, lifecycle)
    stats = build.train_shared_index(work, settings.factory, settings.seed)
    context.log.info(f"trained {stats.factory} on {stats.train_size} vectors in {stats.seconds:.1f}s")
    trained = {"factory": stats.factory, "train_size": stats.train_size, "train_seconds": stats.seconds}
    for shard in range(len(build.read_plan(work))):
        yield dg.DynamicOutput({"shard": shard, **trained}, mapping_key=f"s{shard}")


@dg.op(out=dg.Out(dict, io_manager_key=OUTPUTS))
def encode_shard(
    context: dg.OpExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource, trained: dict
) -> dict:
    """Add one shard's vectors to a copy of the trained index."""
    _, _, work = build_step(context, settings, lifecycle)
    t0 = time.perf_counter()
    rows = build.encode_shard(work, trained["shard"])
    return {**trained, "rows": rows, "seconds": time.perf_counter() - t0}


@dg.op(out=dg.Out(dict, io_manager_key=OUTPUTS))
def merge_shards(
    context: dg.OpExecutionContext,
    settings: BuildSettings,
    lifecycle: LifecycleResource,
    shards: list[dict],
) -> dg.Output:
    """Append the shards' indexes into the version's `faiss.index` (refused, exit 4, if trained differently)."""
    root, staging, work = build_step(context, settings, lifecycle)
    summary, merge_seconds = build.merge_shards(work, staging)
    return dg.Output(
        {"ntotal": summary.ntotal},
        metadata={
            "factory": summary.factory,
            "ntotal": summary.ntotal,
            "dimension": summary.dim,
            "metric": summary.metric,
            "shards": len(shards),
            "train_size": shards[0]["train_size"],
            "train_seconds": round(shards[0]["train_seconds"], 3),
            "add_seconds": round(max(s["seconds"] for s in shards), 3),
            "merge_seconds": round(merge_seconds, 3),
            **_file_meta(context, root, staging, FAISS_FILE),
        },
    )


@dg.graph_asset(
    ins={"embeddings": dg.AssetIn(dagster_type=dg.Nothing)},
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"faiss"},
    description="FAISS inner-product index over the chunk vectors, ids = chunk_id (IndexIDMap2): trained once, "
    "each shard encoded into a copy (one step each), merged in order.",
)
def faiss_index(embeddings):
    return merge_shards(train_shared_index(embeddings).map(encode_shard).collect())


@dg.asset(
    deps=[chunks],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"numpy"},
    description="BM25 index over the chunks' code-aware tokens (text, path, defined names): lexical.npz.",
)
def lexical_index(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging, work = build_step(context, settings, lifecycle)
    stats = build.build_lexical(staging, work)
    return dg.MaterializeResult(
        metadata={
            "chunks": stats.chunks,
            "terms": stats.terms,
            "seconds": round(stats.seconds, 3),
            **_file_meta(context, root, staging, LEXICAL_FILE),
        }
    )


@dg.asset(
    deps=[faiss_index],
    partitions_def=index_versions,
    group_name=BUILD_GROUP,
    kinds={"parquet"},
    description="FAISS row -> chunk_id map exported from the index (faiss_idmap.parquet).",
)
def faiss_idmap(
    context: dg.AssetExecutionContext, settings: BuildSettings, lifecycle: LifecycleResource
) -> dg.MaterializeResult:
    root, staging, _ = build_step(context, settings, lifecycle)
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
    root, staging, work = build_step(context, settings, lifecycle)
    embedder = settings.load_embedder()
    meta = {
        "version": context.partition_key,
        "repo": settings.repo_path().as_posix(),
        "embedder": embedder.name,
        "embedder_spec": settings.embedder,
        "embedder_fingerprint": embedder.fingerprint,
        "embedder_dim": str(embedder.dim),
        "built_on": socket.gethostname(),
        **settings.version_attrs(),
    }
    t0 = time.perf_counter()
    build.build_catalog(staging, work, meta)
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
    root, staging, work = build_step(context, settings, lifecycle)
    embedder = settings.load_embedder()
    attrs = {
        "embedder_name": embedder.name,
        "embedder_fingerprint": embedder.fingerprint,
        "repo": settings.repo_path().as_posix(),
        **settings.version_attrs(),
    }
    vdir = build.finalize(root, context.partition_key, staging, work, embedder.dim, attrs)
    root.release_build_lease(context.partition_key, context.run_id)  # sealed: nothing of the run is left to guard
    manifest = root.read_manifest(context.partition_key)
    files = manifest["files"]
    table = ["| file | bytes | mutable |", "| --- | ---: | --- |"]
    table += [
        f"| {name} | {e['size']:,} | {'yes' if e.get('mutable') else 'no'} |" for name, e in sorted(files.items())
    ]
    metadata = {
        "path": dg.MetadataValue.path(str(vdir)),
        "kind": settings.kind,
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


BUILD_ASSETS = [chunks, scip_index, embeddings, lexical_index, faiss_index, faiss_idmap, catalog, index_version]
