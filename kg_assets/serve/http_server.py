"""`indexctl serve`: the current version over HTTP JSON (Starlette on uvicorn), following `CURRENT`.

    GET  /search?q=TEXT&k=10&mode=hybrid     POST /search {"query", "k", "mode"}
         -> 200 {"version", "mode", "results": [hit, ...]}  (the hits of `indexctl search --json`)
    GET  /health        -> 200 {"status", "version", "loaded_at", "queries_served", ...}; 503 when nothing is loaded
    GET  /chunks/{id}   -> 200 {"version", "chunk_id", "uri", "language", "start_line", "end_line", "text", ...}

A bad request gets 400 `{"error": one line}`. Searches run in a thread pool (they are CPU-bound), so the event
loop keeps accepting and answering /health during a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import re
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kg_assets.lib.errors import ConflictError, UsageError
from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets.lib.retrieval import check_chunk_id, check_query
from kg_assets.serve.holder import Unavailable, VersionHolder

MAX_BODY_BYTES = 1 << 20  # a search request is a few hundred bytes; a larger body is refused unread (413)
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")  # ASCII digits only: int() also takes other scripts' digits


class BodyTooLarge(Exception):
    """A request body over MAX_BODY_BYTES (413); it is not read further."""


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(value: Any, name: str) -> int:
    """An integer from JSON or a query string: a JSON integer, or a string of at most 20 ASCII digits."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise UsageError(f"{name} must be an integer, got {json.dumps(value)[:40]}")
    if isinstance(value, str) and not _INTEGER.fullmatch(value):
        raise UsageError(f"{name} must be an integer, got {value[:40]!r}")
    return int(value)


def _json_int(digits: str) -> int:
    if len(digits.lstrip("-")) > 20:
        raise UsageError(f"the body has a number of {len(digits)} digits; numbers here have at most 20")
    return int(digits)


def _json_constant(name: str) -> None:
    raise UsageError(f"the body is not strict JSON: {name} is not a number")


async def _json_body(request: Request) -> Any:
    """The request body parsed as strict JSON: BodyTooLarge past MAX_BODY_BYTES (declared or streamed, never read
    whole), UsageError for anything malformed (not JSON, nested too deeply, a huge or non-finite number)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge
    try:
        return json.loads(body, parse_int=_json_int, parse_constant=_json_constant)
    except RecursionError:
        raise UsageError("the body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"the body is not JSON: {str(exc)[:80]}") from None


async def _search_params(request: Request) -> tuple[str, int, str]:
    """(query, k, mode) from the query string (GET) or a JSON object body (POST); UsageError when malformed."""
    if request.method == "GET":
        params: Any = request.query_params
        if "q" not in params:
            raise UsageError("missing query parameter q")
        text = params["q"]
    else:
        params = await _json_body(request)
        if not isinstance(params, dict):
            raise UsageError('the body must be a JSON object: {"query": TEXT, "k": 10, "mode": "hybrid"}')
        text = params.get("query")
        if not isinstance(text, str):
            raise UsageError('the body needs "query", a string')
    mode = params.get("mode", "hybrid")
    if not isinstance(mode, str):
        raise UsageError("mode must be a string")
    k = _int(params.get("k", 10), "k")
    return check_query(text, k, mode), k, mode


async def search(request: Request) -> JSONResponse:
    text, k, mode = await _search_params(request)
    holder: VersionHolder = request.app.state.holder

    def run() -> dict[str, Any]:
        with holder.use() as handle:
            hits = handle.search(text, k, mode)
            holder.count_query()
            return {"version": handle.version, "mode": mode, "results": [hit.to_json() for hit in hits]}

    return JSONResponse(await run_in_threadpool(run))


async def health(request: Request) -> JSONResponse:
    state = request.app.state.holder.status()
    return JSONResponse(state, status_code=200 if state["version"] else 503)


async def chunk(request: Request) -> JSONResponse:
    chunk_id = check_chunk_id(_int(request.path_params["chunk_id"], "chunk id"))
    holder: VersionHolder = request.app.state.holder

    def run() -> tuple[str, dict[str, Any] | None]:
        with holder.use() as handle:
            return handle.version, handle.chunk(chunk_id)

    version, row = await run_in_threadpool(run)
    if row is None:
        return _error(404, f"version {version} has no chunk {chunk_id}")
    return JSONResponse({"version": version, **row})


async def _usage_error(request: Request, exc: Exception) -> JSONResponse:
    return _error(400, str(exc).strip().splitlines()[0])


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _error(503, str(exc))


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


def create_app(holder: VersionHolder) -> Starlette:
    app = Starlette(
        routes=[
            Route("/search", search, methods=["GET", "POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/chunks/{chunk_id}", chunk, methods=["GET"]),
        ],
        exception_handlers={UsageError: _usage_error, Unavailable: _unavailable, BodyTooLarge: _too_large},
    )
    app.state.holder = holder
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, except that a SIGTERM/SIGINT ends `serve` after the graceful shutdown (in-flight
    requests finished) instead of being raised again, so the process exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def serve(root: LifecycleRoot, host: str, port: int) -> None:
    """Load the current version, listen on host:port (0: any free port) and serve until SIGTERM/SIGINT;
    prints `serving <version> on http://HOST:PORT` to stderr once requests are accepted.

    The socket is made with IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on connections of such a socket,
    and without it every keep-alive response waited ~40 ms for the client's delayed ACK."""
    family, address = _listen_address(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host}: no interface of this machine has that address") from None
        raise ConflictError(f"cannot listen on {url_of(host, port)}: {exc.strerror or exc}") from None
    if warning := exposure_warning(address[0]):
        print(warning, file=sys.stderr, flush=True)
    holder = VersionHolder(root)
    try:
        holder.start()
        config = uvicorn.Config(create_app(holder), log_level="warning", access_log=False, lifespan="off")
        asyncio.run(_serve(_Server(config), sock, holder))
    finally:
        holder.close()
        sock.close()


def _listen_address(host: str, port: int) -> tuple[int, tuple]:
    """The socket family and address `host` names (an IP address, or a name resolved locally); UsageError for one
    that is neither (`999.1.1.1`)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {host!r} is not an address to listen on ({getattr(exc, 'strerror', exc)})") from None
    return family, address


def exposure_warning(ip: str) -> str | None:
    """The warning for listening on an address other machines can reach (nothing authenticates requests)."""
    if ipaddress.ip_address(ip).is_loopback:
        return None
    return (
        f"warning: listening on {ip}, which other machines can reach, and nothing authenticates requests; "
        "use --host 127.0.0.1 unless that is intended"
    )


def url_of(host: str, port: int) -> str:
    """`http://HOST:PORT`, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _serve(server: _Server, sock: socket.socket, holder: VersionHolder) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        host, port = sock.getsockname()[:2]
        state = holder.status()
        served = state["version"] or f"nothing yet ({state['error']})"
        print(f"serving {served} on {url_of(host, port)}", file=sys.stderr, flush=True)
    await task
    print("stopped", file=sys.stderr, flush=True)
