"""`indexctl mcp`: the current version as Model Context Protocol tools on stdio (the official `mcp` SDK),
following `CURRENT` like the HTTP server. Every result names the version that answered it.

stdout carries the protocol only; notes and errors go to stderr.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server

from kg_assets.lib.errors import KgError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle, check_chunk_id, check_query
from kg_assets.serve.holder import Unavailable, VersionHolder


@contextlib.contextmanager
def _answering(holder: VersionHolder) -> Iterator[VersionHandle]:
    """The served handle; a bad request or nothing loaded becomes a ToolError the client reads (one line)."""
    try:
        with holder.use() as handle:
            yield handle
    except (KgError, Unavailable) as exc:
        raise ToolError((str(exc).strip().splitlines() or [type(exc).__name__])[0]) from None


def create_server(holder: VersionHolder) -> MCPServer:
    server = MCPServer(
        "kg-assets",
        instructions=(
            "Code search over the published index of a repository: search_code finds chunks of code for a "
            "question or an identifier, get_chunk returns one chunk's text, find_symbol lists where a name is "
            "defined and referenced."
        ),
        log_level="WARNING",
    )

    @server.tool()
    def search_code(query: str, k: int = 10, mode: str = "hybrid") -> dict[str, Any]:
        """Search the code for a question in words or an identifier: the top k chunks (uri, 1-based line span,
        score, first line, the channels that found it). mode: hybrid (default), dense, lexical or symbol; k: 1-1000."""
        with _answering(holder) as handle:
            hits = handle.search(check_query(query, k, mode), k, mode)
            holder.count_query()
            return {"version": handle.version, "mode": mode, "results": [hit.to_json() for hit in hits]}

    @server.tool()
    def get_chunk(chunk_id: int) -> dict[str, Any]:
        """One chunk by its id (from search_code or find_symbol): uri, language, line span, text, symbols."""
        with _answering(holder) as handle:
            row = handle.chunk(check_chunk_id(chunk_id))
            if row is None:
                raise ToolError(f"version {handle.version} has no chunk {chunk_id}")
            return {"version": handle.version, **row}

    @server.tool()
    def find_symbol(name: str) -> dict[str, Any]:
        """Definitions, then references, of a (possibly qualified) name from the SCIP data, each with its chunk
        id, uri and line span."""
        with _answering(holder) as handle:
            return {"version": handle.version, "name": name, "matches": handle.find_symbol(name)}

    return server


def protocol_error(line: str) -> str | None:
    """The JSON-RPC error answer to a stdin line that is not a JSON-RPC message (the SDK drops such a line without
    an answer): -32700 when it is not JSON (or nested too deeply to parse), -32600 when it is JSON but no message;
    None for a message."""
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return None
    except ValueError:  # pydantic's ValidationError is a ValueError
        pass
    try:
        parsed = json.loads(line)
    except (ValueError, RecursionError):
        code, message, request_id = types.PARSE_ERROR, "Parse error: the line is not JSON", None
    else:
        found = parsed.get("id") if isinstance(parsed, dict) else None
        request_id = found if isinstance(found, int | str) and not isinstance(found, bool) else None
        code, message = types.INVALID_REQUEST, "Invalid Request: the line is not a JSON-RPC 2.0 message"
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}) + "\n"


class _LineWriter:
    """stdout for the SDK's writer and for `protocol_error` answers: one whole line per write, under a lock, so
    the two never interleave."""

    def __init__(self, out: anyio.AsyncFile[str]) -> None:
        self._out, self._lock = out, anyio.Lock()

    async def write(self, line: str) -> None:
        async with self._lock:
            await self._out.write(line)
            await self._out.flush()

    async def flush(self) -> None:
        pass


async def _checked_lines(lines: anyio.AsyncFile[str], out: _LineWriter) -> AsyncIterator[str]:
    """stdin's JSON-RPC messages; any other line is answered here (`protocol_error`) and not passed on."""
    async for line in lines:
        if not line.strip():
            continue
        answer = protocol_error(line)
        if answer is None:
            yield line
        else:
            await out.write(answer)


async def _serve_stdio(server: MCPServer) -> None:
    stdin = anyio.wrap_file(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    stdout = _LineWriter(anyio.wrap_file(io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8")))
    lines: Any = _checked_lines(stdin, stdout)  # an async iterator of lines, all the transport reads of stdin
    async with stdio_server(lines, stdout) as (read_stream, write_stream):
        lowlevel = server._lowlevel_server  # what MCPServer.run_stdio_async runs, here over checked lines
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


def serve_stdio(root: LifecycleRoot) -> None:
    """Load the current version and answer MCP requests on stdin/stdout until the client closes stdin; a line
    that is not a JSON-RPC message gets its JSON-RPC error (`protocol_error`)."""
    holder = VersionHolder(root)
    try:
        holder.start()
        anyio.run(_serve_stdio, create_server(holder))
    finally:
        holder.close()
