"""Read `index.scip` files with our own minimal SCIP schema (only the fields kg-assets uses).

The message classes are built at run time from a descriptor (no protoc, no generated code). Unknown fields in a
full SCIP index are skipped by protobuf, so this subset parses any index. Field numbers follow scip.proto.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from kg_assets.lib.errors import NotFoundError, ValidationError
from kg_assets.lib.fsutil import atomic_write_bytes

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


# ---- producing and tabulating -------------------------------------------------------------------------


def scip_python_command() -> Path:
    """The scip-python executable: this checkout's node_modules (scripts/setup.sh), else one on the PATH."""
    local = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "scip-python"
    if local.exists():
        return local
    found = shutil.which("scip-python")
    if found:
        return Path(found)
    raise NotFoundError(
        "scip-python is not installed: run scripts/setup.sh (npm ci) or npm install -g @sourcegraph/scip-python"
    )


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child before exec: the kernel SIGKILLs it when its parent dies (Linux PR_SET_PDEATHSIG); a parent
    that died before the call already left it orphaned, so it exits."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


class ScipPythonRun:
    """scip-python indexing a repository in a child process, so the caller can do other work until `wait()`.

    scip-python exits 1 and leaves a stub file when it crashes, so `wait()` checks the exit code and parses the
    output before it atomically replaces `out`. `close()` (or leaving the `with` block) kills a run that is still
    going. The indexer stays in the caller's process group and dies with it (even on SIGKILL of the caller); its
    environment file, log and output go into `scratch`, which the caller owns. `timeout` counts from the start.
    """

    def __init__(
        self, repo: Path, out: Path, project_name: str, project_version: str, scratch: Path, timeout: float = 3600
    ) -> None:
        command = scip_python_command()
        self.out, self.timeout = Path(out), timeout
        env_file, self._result, self._log = scratch / "environment.json", scratch / "index.scip", scratch / "output.log"
        env_file.write_text("[]")  # skip pip-based dependency discovery: we index the repository's own code
        args = [str(command), "index", "--cwd", str(Path(repo).absolute()), "--project-name", project_name]
        args += ["--project-version", project_version, "--output", str(self._result), "--environment", str(env_file)]
        self._deadline = time.monotonic() + timeout
        with self._log.open("wb") as log:  # a file, not a pipe: nobody drains a pipe while the caller works
            self.process = subprocess.Popen(
                [*args, "--quiet"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )

    def wait(self) -> Any:
        """Block until scip-python exits; check, parse and install its output into `out`; return the index."""
        try:
            code = self.process.wait(timeout=max(self._deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            self.close()
            raise ValidationError(f"scip-python did not finish within {self.timeout:.0f}s") from None
        if code != 0:
            tail = self._log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ValidationError(f"scip-python failed with exit code {code}: {tail[0]}")
        index = read_index(self._result)
        atomic_write_bytes(self.out, self._result.read_bytes())
        return index

    def close(self) -> None:
        """Kill scip-python if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ScipPythonRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
