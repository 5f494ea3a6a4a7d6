"""Read `index.scip` files with our own minimal SCIP schema (only the fields kg-assets uses).

The message classes are built at run time from a descriptor (no protoc, no generated code). Unknown fields in a
full SCIP index are skipped by protobuf, so this subset parses any index. Field numbers follow scip.proto.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

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
