"""The build steps that turn a repository into a version's artifacts, one function per asset (which is why it is
longer than our 450-line guide: each step is short, and they share the staging and step-output conventions).

Each step writes the version's files into its staging directory (`versions/<v>.staging`) and its intermediate
files into the build's step-output location `work` (default `versions/<v>.staging/build`; any path or fsspec URL
all workers see, see `workdir`), dropped when the version is finalized.

Embedding and encoding are sharded: the chunks (in their order, path-sorted) are cut into contiguous shards at
file boundaries, each shard embeds its chunks and encodes them into a copy of the one trained index, and
`merge_shards` appends the shards in order. The result is the unsharded build's: same rows in the same order,
so the same ids, vectors and index (byte-identical for Flat and IVF-Flat).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from kg_assets.lib import catalog, chunking, copies, faiss_index, idmap, lexical, scip, treesitter, workdir
from kg_assets.lib.embedding import Embedder, Progress, embedding_text
from kg_assets.lib.errors import KgError, UsageError, ValidationError
from kg_assets.lib.fsutil import atomic_write_bytes
from kg_assets.lib.lifecycle import CATALOG_FILE, FAISS_FILE, IDMAP_FILE, SCIP_FILE, LifecycleRoot
from kg_assets.lib.workdir import WorkPath

BUILD_DIR = "build"  # the default step-output location inside the staging directory
CHUNKS_FILE = "chunks.parquet"
PLAN_FILE = "shards.json"
SHARDS_DIR = "shards"
TRAINED_FILE = "trained.index"
# Below this many chunks a build is one shard; above, `default_shards` cuts it (one shard embeds ~20 chunks/s
# per two cores with the default model, so 20k chunks is ~15 minutes of one worker).
SHARD_MIN_CHUNKS = 20_000

CHUNK_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.int64()),
        ("uri", pa.string()),
        ("language", pa.string()),
        ("start_line", pa.int32()),
        ("end_line", pa.int32()),
        ("start_byte", pa.int64()),
        ("end_byte", pa.int64()),
        ("text", pa.string()),
        ("content_hash", pa.string()),
        ("symbols", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True)
class ChunkStats:
    chunks: int
    files: int
    skipped: dict[str, str]
    languages: dict[str, int]
    seconds: float
    fallback_languages: tuple[str, ...] = ()  # had a tree-sitter grammar that did not load: line windows


def chunk_for(
    repo: Path, embedder: Embedder, *, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> chunking.RepoChunks:
    """`repo`'s chunks as `embedder` sees them: within its token window less [CLS], [SEP] and the path header
    line that `embedding_text` puts first (also what the static embedder's training corpus is cut with)."""
    budget = embedder.max_tokens - 2  # [CLS] and [SEP]
    return chunking.chunk_repository(
        repo,
        embedder.count_tokens,
        budget,
        header=lambda uri: embedding_text(uri, ""),
        include=include,
        exclude=exclude,
    )


def build_chunks(
    repo: Path,
    staging: Path,
    work: WorkPath,
    embedder: Embedder,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> ChunkStats:
    """Chunk `repo` within the embedder's token window (minus the header) into `<work>/chunks.parquet`;
    `include`/`exclude` are path globs (see `chunking.chunk_repository`)."""
    t0 = time.perf_counter()
    result = chunk_for(repo, embedder, include=include, exclude=exclude)
    if not result.chunks:  # nothing to index: leave nothing staged
        shutil.rmtree(staging, ignore_errors=True)
        reasons = ", ".join(sorted(set(result.skipped.values()))) or "none"
        raise ValidationError(f"no indexable files in {repo} ({len(result.skipped)} skipped; reasons: {reasons})")
    workdir.ensure_dir(work)
    workdir.write_table(work / CHUNKS_FILE, chunk_table(result.chunks))
    languages: dict[str, int] = {}
    for chunk in result.chunks:
        languages[chunk.language] = languages.get(chunk.language, 0) + 1
    return ChunkStats(
        len(result.chunks),
        len(result.files),
        result.skipped,
        languages,
        time.perf_counter() - t0,
        tuple(sorted(result.fallback_languages)),
    )


def chunk_table(chunks: Sequence[chunking.Chunk]) -> pa.Table:
    """Chunks as the rows of `CHUNK_SCHEMA`."""
    columns: dict[str, list[Any]] = {name: [] for name in CHUNK_SCHEMA.names}
    for chunk in chunks:
        for name in CHUNK_SCHEMA.names:
            value = getattr(chunk, name)
            columns[name].append(list(value) if name == "symbols" else value)
    return pa.table(columns, schema=CHUNK_SCHEMA)


def read_chunks(work: WorkPath) -> pa.Table:
    return workdir.read_table(work / CHUNKS_FILE)


def default_shards(chunks: int, cores: int | None = None) -> int:
    """1 below SHARD_MIN_CHUNKS chunks; else one per core (at least 2), but no shard under SHARD_MIN_CHUNKS."""
    if chunks < SHARD_MIN_CHUNKS:
        return 1
    return max(2, min(cores or os.cpu_count() or 1, chunks // SHARD_MIN_CHUNKS))


def plan_shards(work: WorkPath, shards: int) -> list[tuple[int, int]]:
    """Cut the chunk rows into `shards` contiguous ranges `[start, end)` (fewer when there are fewer files) of
    about equal size, every cut at a file boundary (a file is never split), and record them in
    `<work>/shards.json`. 0 means `default_shards`. Concatenating the shards in order gives the chunk order."""
    uris = read_chunks(work).column("uri").to_pylist()
    n = len(uris)
    starts = [row for row in range(1, n) if uris[row] != uris[row - 1]]  # where each file after the first starts
    count = min(shards or default_shards(n), len(starts) + 1)
    bounds = [0]
    for i in range(1, count):
        first = bisect.bisect_right(starts, bounds[-1])  # a cut after the previous one ...
        last = len(starts) - (count - i)  # ... leaving one file start for each cut still to make
        bounds.append(starts[min(max(bisect.bisect_left(starts, i * n // count), first), last)])
    ranges = list(zip(bounds, [*bounds[1:], n], strict=True))
    workdir.write_bytes(work / PLAN_FILE, json.dumps({"shards": ranges, "chunks": n}).encode())
    return ranges


def read_plan(work: WorkPath) -> list[tuple[int, int]]:
    return [tuple(r) for r in json.loads((work / PLAN_FILE).read_bytes())["shards"]]


def shard_file(work: WorkPath, shard: int, suffix: str) -> WorkPath:
    return work / SHARDS_DIR / f"{shard:04d}{suffix}"


@dataclass(frozen=True)
class EmbedStats:
    embedded: int
    reused: int
    dim: int
    seconds: float
    reused_from: str | None


def earlier_versions(root: LifecycleRoot) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """(version, directory, catalog meta) of every complete version, newest first; unreadable catalogs are
    skipped (reuse is an optimization: missing it only costs recomputation)."""
    for info in sorted(root.status(), key=lambda i: i.created or "", reverse=True):
        if info.state not in ("current", "published", "staged"):
            continue
        vdir = root.version_dir(info.version)
        try:
            yield info.version, vdir, catalog.read_meta(vdir / CATALOG_FILE)
        except (duckdb.Error, KgError):
            continue


def previous_vectors(
    root: LifecycleRoot, fingerprint: str, keys: Sequence[tuple[str, str]]
) -> tuple[str | None, dict[tuple[str, str], np.ndarray]]:
    """Stored vectors of the given (uri, content hash) chunks from the complete versions embedded with the same
    embedder, newest first, each read only for the keys still missing (the same text under the same path embeds to
    the same vector, whichever version holds it; a root may hold several repositories). Returns the versions that
    gave any, comma-separated, and the vectors by key."""
    missing = set(keys)
    known: dict[tuple[str, str], np.ndarray] = {}
    sources = []
    for version, vdir, meta in earlier_versions(root):
        if not missing:
            break
        if meta.get("embedder_fingerprint") != fingerprint:
            continue
        wanted = pa.table({"uri": [k[0] for k in missing], "content_hash": [k[1] for k in missing]})
        try:
            with catalog.connect_read_only(vdir / CATALOG_FILE) as con:
                con.register("wanted", wanted)
                table = con.sql(
                    "SELECT uri, content_hash, embedding FROM chunks JOIN wanted USING (uri, content_hash)"
                ).to_arrow_table()
        except (duckdb.Error, KgError):  # an unreadable old catalog only costs recomputation
            continue
        if table.num_rows == 0:
            continue
        vectors = table.column("embedding").combine_chunks().flatten().to_numpy().astype(np.float32)
        vectors = vectors.reshape(table.num_rows, -1)
        found = zip(table.column("uri").to_pylist(), table.column("content_hash").to_pylist(), strict=True)
        usable = np.isfinite(vectors).all(axis=1) & vectors.any(axis=1)  # not a zero vector an old server gave
        for i, key in enumerate(found):
            if usable[i]:
                known[key] = vectors[i]
                missing.discard(key)
        sources.append(version)
    return ", ".join(sources) or None, known


def embed_shard(
    root: LifecycleRoot, work: WorkPath, shard: int, embedder: Embedder, progress: Progress | None = None
) -> EmbedStats:
    """Embed shard `shard`'s chunks, reusing the vectors earlier versions with the same embedder hold for the same
    (uri, content hash); writes `shards/NNNN.npy` and `shards/NNNN.parquet` (its chunk rows with an
    `embedding` column, what the catalog reads)."""
    t0 = time.perf_counter()
    start, end = read_plan(work)[shard]
    chunks = read_chunks(work).slice(start, end - start)
    uris, hashes, texts = (chunks.column(c).to_pylist() for c in ("uri", "content_hash", "text"))
    source, known = previous_vectors(root, embedder.fingerprint, list(zip(uris, hashes, strict=True)))
    vectors = np.zeros((chunks.num_rows, embedder.dim), dtype=np.float32)
    todo = []
    for row, key in enumerate(zip(uris, hashes, strict=True)):
        if key in known and known[key].shape[0] == embedder.dim:
            vectors[row] = known[key]
        else:
            todo.append(row)
    if todo:
        vectors[todo] = embedder.embed([embedding_text(uris[i], texts[i]) for i in todo], progress=progress)
    workdir.ensure_dir(work / SHARDS_DIR)
    workdir.write_array(shard_file(work, shard, ".npy"), vectors)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    rows = chunks.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, embedder.dim))
    workdir.write_table(shard_file(work, shard, ".parquet"), rows)
    return EmbedStats(len(todo), chunks.num_rows - len(todo), embedder.dim, time.perf_counter() - t0, source)


def read_embeddings(work: WorkPath) -> np.ndarray:
    """Every chunk's vector, in chunk order (the shards' arrays concatenated)."""
    parts = [workdir.read_array(shard_file(work, i, ".npy")) for i in range(len(read_plan(work)))]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


@dataclass(frozen=True)
class TrainStats:
    factory: str
    train_size: int
    seconds: float


def train_shared_index(work: WorkPath, factory: str = "auto", seed: int = 0) -> TrainStats:
    """Train the one index every shard encodes into (`<work>/trained.index`), on the rows an unsharded build
    samples (`faiss_index.train_rows`), gathered from the shards: so the quantizer is the unsharded one."""
    t0 = time.perf_counter()
    plan = read_plan(work)
    n = plan[-1][1]
    arrays = [workdir.read_array(shard_file(work, i, ".npy"), mmap=True) for i in range(len(plan))]
    dim = arrays[0].shape[1]
    if factory == "auto":
        factory = faiss_index.choose_factory(n, dim)
    rows = faiss_index.train_rows(factory, n, dim, seed)
    sample = np.empty((len(rows), dim), dtype=np.float32)
    for (start, end), array in zip(plan, arrays, strict=True):
        mine = (rows >= start) & (rows < end)
        sample[mine] = array[rows[mine] - start]
    index = faiss_index.train_index(factory, dim, sample)
    workdir.write_index(work / TRAINED_FILE, index)
    return TrainStats(factory, len(rows), time.perf_counter() - t0)


def encode_shard(work: WorkPath, shard: int) -> int:
    """Add shard `shard`'s vectors (ids = chunk_id) to a copy of the trained index: `shards/NNNN.index`."""
    start, end = read_plan(work)[shard]
    index = workdir.read_index(work / TRAINED_FILE)
    ids = read_chunks(work).column("chunk_id").to_numpy()[start:end]
    faiss_index.add_vectors(index, workdir.read_array(shard_file(work, shard, ".npy"), mmap=True), ids)
    workdir.write_index(shard_file(work, shard, ".index"), index)
    return index.ntotal


def merge_shards(work: WorkPath, staging: Path) -> tuple[faiss_index.IndexSummary, float]:
    """Append the shards' indexes in order into the version's `faiss.index` (ValidationError when one was
    trained differently from the others or from `trained.index`); returns its summary and the seconds taken."""
    t0 = time.perf_counter()
    trained = faiss_index.trained_fingerprint(workdir.read_index(work / TRAINED_FILE))
    parts = [workdir.read_index(shard_file(work, i, ".index")) for i in range(len(read_plan(work)))]
    if faiss_index.trained_fingerprint(parts[0]) != trained:
        raise ValidationError("shard 0 was not encoded into this build's trained index; rebuild the version")
    index = faiss_index.merge_indexes(parts)
    faiss_index.write_index(index, staging / FAISS_FILE)
    return faiss_index.summarize(index), time.perf_counter() - t0


@dataclass(frozen=True)
class LexicalStats:
    chunks: int
    terms: int
    seconds: float


def build_lexical(staging: Path, work: WorkPath) -> LexicalStats:
    """Index the chunks' code-aware tokens (text, path, defined names) for BM25 into `lexical.npz`."""
    t0 = time.perf_counter()
    index = lexical.LexicalIndex.from_chunks(read_chunks(work))
    index.save(staging / lexical.LEXICAL_FILE)
    return LexicalStats(len(index.ids), index.terms, time.perf_counter() - t0)


def build_idmap(staging: Path) -> int:
    """Export `faiss_idmap.parquet` from the index itself (row order -> external id)."""
    index = faiss_index.read_index(staging / FAISS_FILE)
    ids = faiss_index.external_ids(index)
    idmap.write_idmap(idmap.idmap_table(ids, FAISS_FILE), staging / IDMAP_FILE)
    return len(ids)


SCIP_SOURCES_FILE = "scip_sources.json"


def accepted_files(work: WorkPath) -> dict[str, tuple[str, bytes]]:
    """Every file the chunker accepted, by path: its language and its bytes as the chunks hold them (their texts
    joined in byte order, UTF-8). This is all the SCIP indexers are given, so a file the chunker left out
    (excluded, larger than 1 MiB, binary, minified, reached through a symlink) never reaches an indexer."""
    table = read_chunks(work).select(["uri", "language", "start_byte", "text"])
    table = table.sort_by([("uri", "ascending"), ("start_byte", "ascending")])
    files: dict[str, tuple[str, list[str]]] = {}
    for uri, language, text in zip(*(table.column(c).to_pylist() for c in ("uri", "language", "text")), strict=True):
        files.setdefault(uri, (language, []))[1].append(text)
    return {uri: (language, "".join(texts).encode("utf-8")) for uri, (language, texts) in files.items()}


def indexer_sources(files: dict[str, tuple[str, bytes]], indexer: scip.Indexer) -> list[str]:
    """The accepted files of `indexer`'s languages, sorted."""
    return sorted(uri for uri, (language, _) in files.items() if language in indexer.languages)


def indexer_configs(files: dict[str, tuple[str, bytes]], indexer: scip.Indexer) -> list[str]:
    """The configuration files `indexer` needs beside its sources (`go.mod`, `Cargo.toml`, ...) that the chunker
    accepted at the repository's top."""
    return [name for name in indexer.config_files if name in files]


def sources_digest(files: dict[str, tuple[str, bytes]], uris: Sequence[str]) -> str:
    """sha256 over the (path, content) of `uris`: what an indexer's output depends on."""
    digest = hashlib.sha256()
    for uri in uris:
        digest.update(os.fsencode(uri) + b"\0")
        digest.update(hashlib.sha256(files[uri][1]).digest())
    return digest.hexdigest()


def materialize_sources(files: dict[str, tuple[str, bytes]], uris: Sequence[str], dest: Path) -> None:
    """Write `uris` into `dest` at the same relative paths, with the bytes the chunker read: the tree an indexer
    indexes (it never reads the repository itself)."""
    for uri in uris:
        (dest / uri).parent.mkdir(parents=True, exist_ok=True)
        (dest / uri).write_bytes(files[uri][1])


@dataclass(frozen=True)
class IndexerResult:
    """What one indexer gave the build: its sources digest, the tool that made its part of index.scip (name and
    version from the index's metadata), its documents, the earlier version that part was reused from, or the error
    of an indexer found on the PATH that failed (its languages have no SCIP data)."""

    name: str
    digest: str
    tool: str = ""
    version: str = ""
    documents: int = 0
    reused_from: str | None = None
    error: str | None = None

    def record(self) -> dict[str, str]:
        """What the catalog keeps of it (`kg_meta.scip_indexers`) for a later build to reuse the part."""
        return {"digest": self.digest, "tool": self.tool, "version": self.version}


@dataclass(frozen=True)
class ScipStats:
    summary: scip.ScipSummary
    indexers: tuple[IndexerResult, ...]
    seconds: float  # from the start of the step to its result
    waited: float  # of which the caller spent blocked in `finish`


def _earlier_part(
    root: LifecycleRoot, indexer: scip.Indexer, digest: str, project: str
) -> tuple[IndexerResult, Any] | None:
    """The result and part of an earlier index.scip that `indexer` made, from the newest complete version
    whose catalog records the same sources digest for `indexer` and the same project; None without one."""
    for version, vdir, meta in earlier_versions(root):
        recorded = json.loads(meta.get("scip_indexers", "{}"))
        if "scip_digest" in meta:  # a version from before several indexers: scip-python alone
            recorded = {"scip-python": {"digest": meta["scip_digest"], "tool": "scip-python", "version": ""}}
        entry = recorded.get(indexer.name)
        if entry and entry["digest"] == digest and meta.get("scip_project") == project:
            try:
                part = scip.part_of(scip.read_index(vdir / SCIP_FILE), indexer)
            except KgError:
                continue  # an unreadable old index only costs re-indexing
            part.metadata.tool_info.name, part.metadata.tool_info.version = entry["tool"], entry["version"]
            result = IndexerResult(indexer.name, digest, entry["tool"], entry["version"], len(part.documents), version)
            return result, part
    return None


@contextmanager
def scip_started(
    root: LifecycleRoot,
    staging: Path,
    work: WorkPath,
    project_name: str,
    indexers: Sequence[scip.Indexer] = scip.INDEXERS,
) -> Iterator[Callable[[], ScipStats]]:
    """Start the SCIP step and yield `finish`, which waits for it and writes `index.scip`; the caller can embed
    meanwhile (each indexer is a child process, mostly one core). Leaving the block unfinished kills them.

    Every indexer of `scip.INDEXERS` that is installed and has files of its languages among those the chunker
    accepted (`accepted_files`, from the step outputs in `work`) indexes a copy of them (`materialize_sources`)
    in a scratch directory under the lifecycle root, removed at the end, or by `gc` after a crash; all run at
    once. An indexer whose inputs are identical to an earlier version's
    (same sources digest, same project) is not run: that version's part of index.scip is taken instead (the
    project version passed to the indexers is the digest, so symbols only change with the code). The parts are
    merged in `INDEXERS` order (see `scip.merge`); with none (or `indexers` empty: a fast version, whose SCIP
    data the full version brings), index.scip holds no documents.
    """
    t0 = time.perf_counter()
    done: list[tuple[IndexerResult, Any]] = []
    running: list[tuple[scip.Indexer, str, scip.IndexerRun]] = []
    files = accepted_files(work)
    with root.scratch("scip") as scratch, ExitStack() as stack:
        for indexer in indexers:
            sources = indexer_sources(files, indexer)
            command = scip.indexer_command(indexer) if sources else None
            if command is None:
                continue
            inputs = [*sources, *indexer_configs(files, indexer)]
            digest = sources_digest(files, inputs)
            earlier = _earlier_part(root, indexer, digest, project_name)
            if earlier is not None:
                done.append(earlier)
                continue
            job = scip.IndexJob(
                scratch / indexer.name / "src",
                tuple(sources),
                scratch / indexer.name / "index.scip",
                project_name,
                digest[:12],
                scratch / indexer.name,
            )
            materialize_sources(files, inputs, job.src)
            running.append((indexer, digest, stack.enter_context(scip.IndexerRun(indexer, command, job))))

        def finish() -> ScipStats:
            t1 = time.perf_counter()
            for indexer, digest, run in running:
                try:
                    index = run.wait()
                except ValidationError as exc:
                    if indexer.bundled:
                        raise
                    done.append((IndexerResult(indexer.name, digest, error=str(exc)), None))
                    continue
                tool = index.metadata.tool_info
                done.append((IndexerResult(indexer.name, digest, tool.name, tool.version, len(index.documents)), index))
            waited = time.perf_counter() - t1
            order = [i.name for i in scip.INDEXERS]
            done.sort(key=lambda item: order.index(item[0].name))
            parts = [part for _, part in done if part is not None]
            merged = (
                scip.merge(parts) if parts else scip.parse_index(scip.empty_index("kg-assets", "no indexed sources"))
            )
            atomic_write_bytes(staging / SCIP_FILE, merged.SerializeToString())
            results = tuple(result for result, _ in done)
            stats = ScipStats(scip.summarize(merged), results, time.perf_counter() - t0, waited)
            record = {
                "project": project_name,
                "indexers": {r.name: r.record() for r in results if r.error is None},
                "failed": {r.name: r.error for r in results if r.error is not None},
                "stats": asdict(stats),
            }
            workdir.ensure_dir(work)
            workdir.write_bytes(work / SCIP_SOURCES_FILE, json.dumps(record).encode())
            return stats

        yield finish


def recorded_scip(work: WorkPath) -> ScipStats | None:
    """The SCIP step's result when this build already ran it (`scip_started`'s `finish` records it in the
    step outputs); None when it has not."""
    if not (work / SCIP_SOURCES_FILE).exists():
        return None
    stats = json.loads((work / SCIP_SOURCES_FILE).read_bytes())["stats"]
    summary = scip.ScipSummary(**stats["summary"])
    results = tuple(IndexerResult(**r) for r in stats["indexers"])
    return ScipStats(summary, results, stats["seconds"], stats["waited"])


def build_catalog(staging: Path, work: WorkPath, meta: dict[str, str]) -> int:
    """Write `catalog.duckdb`: chunks with vectors (the shards' Parquet files, read by DuckDB over one glob),
    modules, SCIP symbols and occurrences, ID-map join."""
    sources = json.loads((work / SCIP_SOURCES_FILE).read_bytes())
    meta = {**meta, "scip_indexers": json.dumps(sources["indexers"]), "scip_project": sources["project"]}
    meta["scip_failed"] = json.dumps(sources.get("failed", {}))  # indexers found on the PATH that failed
    chunks = read_chunks(work)
    modules = _modules(chunks.select(["uri", "language"]))
    scip_tables = scip.tables(scip.read_index(staging / SCIP_FILE))
    files = file_texts(chunks)
    scip_documents = set(scip_tables["scip_occurrences"].column("path").to_pylist())
    tables = {
        "file_copies": copies.find_copies({uri: text for uri, (_, text, _) in files.items()}),
        "ts_references": tree_sitter_references(files, scip_documents),
    }
    rows = catalog.ParquetRows(str(work / SHARDS_DIR / "*.parquet"), None if workdir.is_local(work) else work.fs)
    return catalog.write_catalog(
        staging / CATALOG_FILE, rows, None, modules, scip_tables, staging / IDMAP_FILE, meta, tables
    )


def file_texts(chunks: pa.Table) -> dict[str, tuple[str, str, list[tuple[int, int, int]]]]:
    """Per file: its language, its text (its chunks in order: they partition it) and its chunks' (first line, last
    line, chunk id)."""
    columns = ("uri", "language", "start_byte", "text", "start_line", "end_line", "chunk_id")
    parts: dict[str, list[tuple]] = {}
    for uri, language, start, text, first, last, chunk_id in zip(
        *(chunks.column(c).to_pylist() for c in columns), strict=True
    ):
        parts.setdefault(uri, []).append((start, language, text, (first, last, chunk_id)))
    files = {}
    for uri, pieces in parts.items():
        pieces.sort()
        files[uri] = (pieces[0][1], "".join(p[2] for p in pieces), [p[3] for p in pieces])
    return files


def tree_sitter_references(files: dict[str, tuple[str, str, list[tuple[int, int, int]]]], skip: set[str]) -> pa.Table:
    """`ts_references` rows (chunk id, name, 1-based line): the names in call, type and import positions of every
    file with a grammar that no SCIP indexer covered (`skip`: the paths SCIP indexed)."""
    rows: dict[str, list] = {"chunk_id": [], "name": [], "line": []}
    for uri, (language, text, spans) in files.items():
        if uri in skip or not treesitter.has_grammar(language):
            continue
        for name, row in treesitter.references(text.encode("utf-8"), language) or ():
            chunk_id = next((c for first, last, c in spans if first <= row + 1 <= last), None)
            if chunk_id is not None:
                rows["chunk_id"].append(chunk_id)
                rows["name"].append(name)
                rows["line"].append(row + 1)
    return pa.table(rows, schema=pa.schema([("chunk_id", pa.int64()), ("name", pa.string()), ("line", pa.int32())]))


def _modules(chunks: pa.Table) -> pa.Table:
    """One row per file: repo path, dotted module name (Python), language and chunk count."""
    counts: dict[str, list[Any]] = {}
    for uri, language in zip(chunks.column("uri").to_pylist(), chunks.column("language").to_pylist(), strict=True):
        counts.setdefault(uri, [language, 0])[1] += 1
    paths = sorted(counts)
    names = [
        p.removesuffix(".py").removesuffix("/__init__").replace("/", ".") if p.endswith(".py") else None for p in paths
    ]
    return pa.table(
        {
            "repo_path": paths,
            "module_name": names,
            "language": [counts[p][0] for p in paths],
            "chunk_count": pa.array([counts[p][1] for p in paths], type=pa.int64()),
        }
    )


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str


def check_staging(staging: Path, work: WorkPath, expected_dim: int) -> list[CheckResult]:
    """The consistency checks that gate finalizing a build (each independent, all reported)."""
    index = faiss_index.read_index(staging / FAISS_FILE)
    index_ids = faiss_index.external_ids(index)
    map_table = idmap.read_idmap(staging / IDMAP_FILE)
    map_ids = map_table.column("external_id").to_numpy()
    with catalog.connect_read_only(staging / CATALOG_FILE) as con:
        cat_ids = con.execute("SELECT chunk_id FROM chunks ORDER BY chunk_id").fetchnumpy()["chunk_id"]
        cat_dim = con.execute("SELECT max(len(embedding)), min(len(embedding)) FROM chunks").fetchone()
        nan_rows = con.execute(
            "SELECT count(*) FROM chunks WHERE NOT isfinite(list_sum(embedding::FLOAT[]))"
        ).fetchone()[0]
        texts = con.execute("SELECT text, content_hash FROM chunks").fetchall()
    vectors = read_embeddings(work)
    dims = {"embedder": expected_dim, "index": index.d, "catalog": cat_dim[0], "embeddings": vectors.shape[1]}
    bad_hashes = sum(1 for text, h in texts if chunking.content_hash(text.encode("utf-8")) != h)
    counts = {"ntotal": index.ntotal, "idmap_rows": map_table.num_rows, "chunk_rows": len(cat_ids)}
    id_sets = [index_ids, map_ids]
    if (staging / lexical.LEXICAL_FILE).is_file():  # optional: search falls back to dense without it
        id_sets.append(lexical.LexicalIndex.load(staging / lexical.LEXICAL_FILE).ids)
    same_ids = all(np.array_equal(np.sort(ids), cat_ids) for ids in id_sets)
    return [
        CheckResult("dimensions_agree", len(set(dims.values())) == 1 and cat_dim[0] == cat_dim[1], f"{dims}"),
        CheckResult("counts_agree", len(set(counts.values())) == 1, f"{counts}"),
        CheckResult(
            "ids_unique_and_identical",
            same_ids and len(np.unique(cat_ids)) == len(cat_ids),
            "index, idmap, lexical index and catalog hold the same unique chunk ids" if same_ids else "id sets differ",
        ),
        CheckResult(
            "vectors_finite",
            nan_rows == 0 and bool(np.isfinite(vectors).all()),
            f"{nan_rows} catalog rows with NaN",
        ),
        CheckResult("text_hashes_match", bad_hashes == 0, f"{bad_hashes} chunks whose text does not match its hash"),
    ]


def finalize(
    root: LifecycleRoot, version: str, staging: Path, work: WorkPath, expected_dim: int, attrs: dict[str, Any]
) -> Path:
    """Re-run the gate checks, drop the step outputs (the location this build owns), then seal the staging dir
    into `versions/<version>`."""
    raise_unless_passed(check_staging(staging, work, expected_dim))
    finalize_outputs(root, version, work)
    return root.finalize(version, staging, attrs)


def finalize_outputs(root: LifecycleRoot, version: str, work: WorkPath) -> None:
    """Drop the step outputs of `version`'s build before sealing: its own location only (`workdir.remove_owned`)."""
    workdir.remove_owned(work, workdir.owner_tag(root.root, version))


def check_work_path(root: LifecycleRoot, repo: Path, version: str, work: WorkPath) -> None:
    """UsageError unless `work`, a step-output location given outside the staging directory (`--work-dir`), is
    one a build of `version` may create, write and remove: not inside the root's versions, not holding the root,
    not overlapping the repository, and absent, empty or this build's own (`workdir.check_claimable`)."""
    if workdir.is_local(work):
        resolved = Path(work).resolve()
        for what, path in (("the lifecycle root's versions", root.versions_dir), ("the repository", repo)):
            path = path.resolve()
            if resolved.is_relative_to(path) or path.is_relative_to(resolved):
                raise UsageError(f"step output location {work} overlaps {what} ({path}); pass another --work-dir")
        for parent in resolved.parents:
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"--work-dir: {parent} is not a directory; pass a directory")
    workdir.check_claimable(work, workdir.owner_tag(root.root, version))


def claim_work_path(root: LifecycleRoot, repo: Path, version: str, work: WorkPath, *, outside: bool) -> None:
    """Make `work` the new build's own empty step-output location (`workdir.claim`), after `check_work_path` when
    it is `outside` the staging directory."""
    if outside:
        check_work_path(root, repo, version, work)
    workdir.claim(work, workdir.owner_tag(root.root, version))


def raise_unless_passed(results: list[CheckResult]) -> None:
    failed = [r for r in results if not r.passed]
    if failed:
        raise ValidationError("; ".join(f"{r.name} failed: {r.detail}" for r in failed))
