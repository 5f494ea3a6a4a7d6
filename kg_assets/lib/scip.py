"""SCIP: run the indexers, merge their indexes, read `index.scip` with our own minimal schema into tables.

The message classes are built at run time from a descriptor (no protoc, no generated code) holding only the fields
kg-assets reads. Protobuf keeps the fields it does not know as unknown fields, so this subset parses any index
and re-serializes (merges) it without losing anything. Field numbers follow scip.proto.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from kg_assets.lib import chunking
from kg_assets.lib.errors import NotFoundError, ValidationError

_PACKAGE = "kg_assets.scip_min"
_F = descriptor_pb2.FieldDescriptorProto
# message -> [(field name, number, type, label, message type or None)]
_SCHEMA: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    "Index": [
        ("metadata", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Metadata"),
        ("documents", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Document"),
        ("external_symbols", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "SymbolInformation"),
    ],
    "Metadata": [
        ("version", 1, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
        ("tool_info", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "ToolInfo"),
        ("project_root", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("text_document_encoding", 4, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
    ],
    "ToolInfo": [
        ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("version", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("arguments", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None),
    ],
    "Document": [
        ("relative_path", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("occurrences", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Occurrence"),
        ("symbols", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "SymbolInformation"),
        ("language", 4, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
    "Occurrence": [
        ("range", 1, _F.TYPE_INT32, _F.LABEL_REPEATED, None),
        ("symbol", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("symbol_roles", 3, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
        ("enclosing_range", 7, _F.TYPE_INT32, _F.LABEL_REPEATED, None),
    ],
    "SymbolInformation": [
        ("symbol", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("documentation", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, None),
        ("kind", 5, _F.TYPE_INT32, _F.LABEL_OPTIONAL, None),
        ("display_name", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
        ("enclosing_symbol", 8, _F.TYPE_STRING, _F.LABEL_OPTIONAL, None),
    ],
}

ROLE_DEFINITION = 1


@functools.cache
def message_classes() -> dict[str, type[Any]]:
    """The SCIP subset's message classes by name (`Index`, `Document`, ...), built once per process."""
    fdp = descriptor_pb2.FileDescriptorProto(name="kg_scip_min.proto", package=_PACKAGE, syntax="proto3")
    for msg_name, fields in _SCHEMA.items():
        msg = fdp.message_type.add(name=msg_name)
        for name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _SCHEMA}


@dataclass(frozen=True)
class ScipSummary:
    """What a SCIP index says about itself: producing tool, documents, occurrences, definitions."""

    tool_name: str
    tool_version: str
    documents: int
    occurrences: int
    definitions: int


def parse_index(data: bytes) -> Any:
    """Parse serialized SCIP bytes into an `Index` message; ValidationError when they are not SCIP."""
    index = message_classes()["Index"]()
    try:
        index.ParseFromString(data)
    except DecodeError as exc:
        raise ValidationError(f"not a SCIP index: protobuf decode failed ({exc})") from exc
    if not index.HasField("metadata") or not index.metadata.tool_info.name:
        raise ValidationError("not a SCIP index: it has no metadata naming the tool that produced it")
    return index


def empty_index(tool_name: str, tool_version: str) -> bytes:
    """A serialized SCIP index naming its tool and holding no documents (a repository with nothing to index)."""
    index = message_classes()["Index"]()
    index.metadata.tool_info.name, index.metadata.tool_info.version = tool_name, tool_version
    return index.SerializeToString()


def read_index(path: Path) -> Any:
    """Read and parse `path` as a SCIP index."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"SCIP index not found: {path}") from None
    try:
        return parse_index(data)
    except ValidationError as exc:
        raise ValidationError(f"{path}: {exc}") from None


def summarize(index: Any) -> ScipSummary:
    occurrences = sum(len(doc.occurrences) for doc in index.documents)
    definitions = sum(1 for doc in index.documents for occ in doc.occurrences if occ.symbol_roles & ROLE_DEFINITION)
    return ScipSummary(
        tool_name=index.metadata.tool_info.name,
        tool_version=index.metadata.tool_info.version,
        documents=len(index.documents),
        occurrences=occurrences,
        definitions=definitions,
    )


# ---- producing: the indexers -----------------------------------------------------------------------


@dataclass(frozen=True)
class IndexJob:
    """One indexer run: the copy of the sources it indexes (`files` relative to `src`), where it writes its index,
    the project's name and version (the sources digest), and a scratch directory of its own for anything else."""

    src: Path
    files: tuple[str, ...]
    output: Path
    project: str
    version: str
    scratch: Path


@dataclass(frozen=True)
class Indexer:
    """A SCIP indexer and the chunker languages whose files it indexes.

    `bundled` indexers are installed by scripts/setup.sh (node_modules): missing or failing, they fail the build.
    The others run when found on the PATH; their failure only leaves their languages without SCIP data (the
    tree-sitter definitions stay). `config_files` are repository-root files copied beside the sources (the
    module or build file the indexer needs); `prepare` writes what else the copy needs before the run; `env` is
    added to the environment (offline switches); `scheme` starts every global symbol the indexer emits.
    """

    name: str
    languages: tuple[str, ...]
    arguments: Callable[[IndexJob], list[str]]
    scheme: str
    bundled: bool = False
    config_files: tuple[str, ...] = ()
    prepare: Callable[[IndexJob], None] | None = None
    env: tuple[tuple[str, str], ...] = ()


def _python_environment(job: IndexJob) -> None:
    """No pip-based dependency discovery (the repository's own code), and a pyright configuration of the copy's
    own: without one, scip-python takes the nearest enclosing `pyproject.toml` or `pyrightconfig.json` above the
    scratch directory (a root inside a repository with `[tool.pyright]`) and indexes what that names."""
    (job.scratch / "environment.json").write_text("[]")
    (job.src / "pyrightconfig.json").write_text("{}")


def _typescript_project(job: IndexJob) -> None:
    """A tsconfig.json listing exactly the copied files (JavaScript included, so mixed and JavaScript-only trees
    index alike) and a package.json naming the project: the repository's own configuration is not used, as its
    `extends` and project references point into node_modules and other places the copy does not have."""
    options = {"allowJs": True, "noEmit": True, "jsx": "preserve", "skipLibCheck": True, "maxNodeModuleJsDepth": 0}
    options |= {"types": [], "noResolve": True}  # nothing from node_modules/@types above the copy
    (job.src / "tsconfig.json").write_text(json.dumps({"compilerOptions": options, "files": list(job.files)}))
    (job.src / "package.json").write_text(json.dumps({"name": job.project, "version": job.version}))


def _scip_python_arguments(job: IndexJob) -> list[str]:
    project = ["--project-name", job.project, "--project-version", job.version]  # without a version it crashes
    output = ["--output", str(job.output), "--environment", str(job.scratch / "environment.json")]
    return ["index", "--cwd", str(job.src), *project, *output, "--quiet"]


def _scip_go_arguments(job: IndexJob) -> list[str]:
    roots = [f"--{kind}-root={job.src}" for kind in ("project", "module", "repository")]
    return [f"--output={job.output}", f"--module-name={job.project}", f"--module-version={job.version}", *roots, "-q"]


INDEXERS: tuple[Indexer, ...] = (
    Indexer("scip-python", ("python",), _scip_python_arguments, "scip-python", True, prepare=_python_environment),
    Indexer(
        "scip-typescript",
        ("javascript", "typescript", "tsx"),
        lambda job: ["index", "--cwd", str(job.src), "--output", str(job.output), "--no-progress-bar"],
        "scip-typescript",
        True,
        prepare=_typescript_project,
    ),
    Indexer(
        "scip-go",
        ("go",),
        _scip_go_arguments,
        "scip-go",
        config_files=("go.mod", "go.sum"),
        env=(("GOPROXY", "off"), ("GOFLAGS", "-mod=mod")),
    ),
    Indexer(
        "scip-java",
        ("java",),
        lambda job: ["index", "--output", str(job.output)],
        "semanticdb",
        config_files=("pom.xml", "build.gradle", "build.gradle.kts", "settings.gradle", "settings.gradle.kts"),
    ),
    Indexer(
        "rust-analyzer",
        ("rust",),
        lambda job: ["scip", str(job.src), "--output", str(job.output)],
        "rust-analyzer",
        config_files=("Cargo.toml", "Cargo.lock"),
        env=(("CARGO_NET_OFFLINE", "true"),),
    ),
)

# Document.language as scip.proto's Language enum names it, for the chunker's languages an indexer reads.
DOCUMENT_LANGUAGES = {
    "python": "Python",
    "javascript": "JavaScript",
    "typescript": "TypeScript",
    "tsx": "TypeScriptReact",
    "go": "Go",
    "java": "Java",
    "rust": "Rust",
}


def indexer_command(indexer: Indexer) -> Path | None:
    """The indexer's executable: this checkout's node_modules (scripts/setup.sh), else one on the PATH; None for
    an indexer that is not bundled and not found; NotFoundError for a bundled one that is missing."""
    local = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / indexer.name
    if local.exists():
        return local
    found = shutil.which(indexer.name)
    if found:
        return Path(found)
    if indexer.bundled:
        raise NotFoundError(f"{indexer.name} is not installed: run scripts/setup.sh (npm ci)")
    return None


_PR_SET_PDEATHSIG = 1
# Indexers yield the CPU to the embedding they run beside: with no core to spare (ONNX takes up to 4 threads), an
# indexer at the same priority slowed the embedding by more than it hid (on 2 cores the build took 6% longer than
# with the indexer run alone before the embedding).
INDEXER_NICENESS = 10


def _indexer_child(parent: int) -> None:
    """In the child before exec: lower its priority (`INDEXER_NICENESS`), and have the kernel SIGKILL it when its
    parent dies (Linux PR_SET_PDEATHSIG); a parent that died before the call already left it orphaned, so it
    exits."""
    os.nice(INDEXER_NICENESS)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


# Each indexer run's bounds. Time: the build of this repository's own ~1,300 chunks takes scip-python about a
# minute on 2 shared cores. Memory (resident, the indexer and its children): scip-python peaked at 730 MiB on it;
# a 50 MB Python file took it past 2 GiB without end. An address-space limit (RLIMIT_AS) is not used: under one,
# scip-python lost workers and wrote a partial index with exit code 0.
INDEXER_TIMEOUT_S = 3600.0
INDEXER_MEMORY_BYTES = 4 << 30
_WATCH_S = 0.25


def tree_rss(pid: int) -> int:
    """Resident bytes of process `pid` and its descendants (Linux /proc); 0 for a process that is gone."""
    total, todo = 0, [pid]
    while todo:
        proc = Path(f"/proc/{todo.pop()}")
        try:
            status = (proc / "status").read_text()
            children = [int(c) for task in proc.glob("task/*/children") for c in task.read_text().split()]
        except (OSError, ValueError):
            continue
        total += next((int(line.split()[1]) << 10 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        todo += children
    return total


class IndexerRun:
    """An indexer indexing `job.src` in a child process, so the caller can do other work until `wait()`.

    Indexers exit non-zero and may leave a partial file when they fail, so `wait()` checks the exit code (the
    error quotes the last line of their output that starts with "error", else the last line) and parses the
    output. A watcher thread kills the indexer once it runs longer than `timeout` seconds or holds more than
    `memory_bytes` resident (with its children); `wait()` then fails saying which bound it crossed. `close()` (or
    leaving the `with` block) kills a run that is still going. The indexer stays in the caller's process group
    and dies with it (even on SIGKILL of the caller); its log goes into `job.scratch`, which the caller owns.
    """

    def __init__(
        self,
        indexer: Indexer,
        command: Path,
        job: IndexJob,
        timeout: float = INDEXER_TIMEOUT_S,
        memory_bytes: int = INDEXER_MEMORY_BYTES,
    ) -> None:
        self.indexer, self.job, self.timeout, self.memory_bytes = indexer, job, timeout, memory_bytes
        self._log = job.scratch / "output.log"
        self._stopped: str | None = None  # which bound the watcher stopped it for
        if indexer.prepare is not None:
            indexer.prepare(job)
        with self._log.open("wb") as log:  # a file, not a pipe: nobody drains a pipe while the caller works
            self.process = subprocess.Popen(
                [str(command), *indexer.arguments(job)],
                cwd=job.src,
                env={**os.environ, **dict(indexer.env)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(_indexer_child, os.getpid()),
            )
        self._watcher = threading.Thread(target=self._watch, name=f"{indexer.name}-bounds", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.process.poll() is None:
            if time.monotonic() >= deadline:
                self._stopped = f"did not finish within its time limit of {self.timeout:g} s"
            elif (rss := tree_rss(self.process.pid)) > self.memory_bytes:
                limit = self.memory_bytes >> 20
                self._stopped = f"used {rss >> 20} MiB, over its memory limit of {limit} MiB"
            if self._stopped:
                self.close()
                return
            time.sleep(_WATCH_S)

    def wait(self) -> Any:
        """Block until the indexer exits; check and parse its output; return the index, each document's
        `language` set from its path (the indexers leave it empty)."""
        code = self.process.wait()
        self._watcher.join()
        if self._stopped:
            raise ValidationError(f"{self.indexer.name} was stopped: it {self._stopped}")
        if code != 0:
            lines = self._log.read_text(errors="replace").strip().splitlines() or ["no output"]
            said = [line.strip() for line in lines if line.lstrip().lower().startswith("error")] or lines
            raise ValidationError(f"{self.indexer.name} failed with exit code {code}: {said[-1]}")
        index = read_index(self.job.output)
        if self.job.files and not index.documents:
            raise ValidationError(
                f"{self.indexer.name} indexed none of the {len(self.job.files)} files it was given "
                f"({self.job.files[0]}, ...): it exited 0 with an empty index"
            )
        for doc in index.documents:
            doc.language = DOCUMENT_LANGUAGES.get(chunking.language_of(doc.relative_path), doc.language)
        return index

    def close(self) -> None:
        """Kill the indexer if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> IndexerRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- merging and tabulating ----------------------------------------------------------------------


def part_of(index: Any, indexer: Indexer) -> Any:
    """What `indexer` contributed to a merged index: the documents of its languages (by path) and the external
    symbols of its scheme, under the merged index's metadata."""
    part = message_classes()["Index"]()
    part.metadata.CopyFrom(index.metadata)
    part.documents.extend(d for d in index.documents if chunking.language_of(d.relative_path) in indexer.languages)
    part.external_symbols.extend(s for s in index.external_symbols if s.symbol.startswith(f"{indexer.scheme} "))
    return part


def merge(parts: Sequence[Any]) -> Any:
    """One index of several indexers' indexes (in the order given): the first one's metadata, then every
    document and every external symbol, concatenated. Each indexer owns its languages, so no document repeats.
    External `local` symbols (scip-python emits a few) are dropped: a local symbol means nothing outside its
    document, and without a scheme it could not be told whose it was (`part_of`)."""
    merged = message_classes()["Index"]()
    merged.metadata.CopyFrom(parts[0].metadata)
    for part in parts:
        merged.documents.extend(part.documents)
        merged.external_symbols.extend(s for s in part.external_symbols if not s.symbol.startswith("local "))
    return merged


def tables(index: Any) -> dict[str, pa.Table]:
    """`scip_symbols` (one row per symbol) and `scip_occurrences` (one row per occurrence, 0-based lines)."""
    occ_rows: dict[str, list] = {k: [] for k in ("path", "symbol", "start_line", "start_col", "end_line", "end_col")}
    occ_rows.update(roles=[], is_definition=[], enclosing_start_line=[], enclosing_end_line=[])
    symbols: dict[str, tuple[str, int, str, str]] = {}
    for doc in index.documents:
        for occ in doc.occurrences:
            r = list(occ.range)
            start_line, start_col, end_line, end_col = (r[0], r[1], r[0], r[2]) if len(r) == 3 else r[:4]
            enc = list(occ.enclosing_range)
            for key, value in (
                ("path", doc.relative_path),
                ("symbol", occ.symbol),
                ("start_line", start_line),
                ("start_col", start_col),
                ("end_line", end_line),
                ("end_col", end_col),
                ("roles", occ.symbol_roles),
                ("is_definition", bool(occ.symbol_roles & ROLE_DEFINITION)),
                ("enclosing_start_line", enc[0] if enc else None),
                ("enclosing_end_line", (enc[2] if len(enc) == 4 else enc[0]) if enc else None),
            ):
                occ_rows[key].append(value)
        for info in doc.symbols:
            doc_text = "\n".join(d for d in info.documentation if not d.startswith("```"))
            symbols[info.symbol] = (
                info.display_name or _display_name(info.symbol),
                info.kind,
                doc_text,
                doc.relative_path,
            )
    sym_table = pa.table(
        {
            "symbol": list(symbols),
            "display_name": [v[0] for v in symbols.values()],
            "kind": pa.array([v[1] for v in symbols.values()], type=pa.int32()),
            "documentation": [v[2] for v in symbols.values()],
            "path": [v[3] for v in symbols.values()],
        }
    )
    occ_types = {"start_line": pa.int32(), "start_col": pa.int32(), "end_line": pa.int32(), "end_col": pa.int32()}
    occ_types.update(roles=pa.int32(), enclosing_start_line=pa.int32(), enclosing_end_line=pa.int32())
    occ_table = pa.table({k: pa.array(v, type=occ_types.get(k)) for k, v in occ_rows.items()})
    return {"scip_symbols": sym_table, "scip_occurrences": occ_table}


def _display_name(symbol: str) -> str:
    """Last descriptor of a SCIP symbol (`pkg/mod`/Class#method(). -> method)."""
    tail = symbol.rstrip("#./()").rsplit("/", 1)[-1]
    for sep in ("#", "."):
        tail = tail.rsplit(sep, 1)[-1]
    return tail.strip("`()")
