"""`indexctl mcp`: the current version as Model Context Protocol tools on stdio (the official `mcp` SDK),
following `CURRENT` like the HTTP server. Every result names the version that answered it.

stdout carries the protocol only; notes and errors go to stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from kg_assets.lib.errors import KgError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.retrieval import VersionHandle, check_query
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
            row = handle.chunk(chunk_id)
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


def serve_stdio(root: LifecycleRoot) -> None:
    """Load the current version and answer MCP requests on stdin/stdout until the client closes stdin."""
    holder = VersionHolder(root)
    try:
        holder.start()
        create_server(holder).run("stdio")
    finally:
        holder.close()
