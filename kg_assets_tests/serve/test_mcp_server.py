"""`indexctl mcp` driven by the MCP SDK's own stdio client: tools listed and called, a publish followed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from kg_assets.lib.lifecycle import LifecycleRoot
from kg_assets_tests.conftest import INDEXCTL


def payload(result: Any) -> dict[str, Any]:
    """A tool result's JSON object (its text content); AssertionError for an error result."""
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


def test_mcp_tools_answer_and_follow_a_publish(served_root: LifecycleRoot, cli_env: dict[str, str]) -> None:
    params = StdioServerParameters(command=sys.executable, args=[*INDEXCTL[1:], "mcp"], env=cli_env)

    async def session() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == {"search_code", "get_chunk", "find_symbol"}
            assert set(tools["search_code"].input_schema["properties"]) == {"query", "k", "mode"}

            found = payload(await client.call_tool("search_code", {"query": "hypotenuse", "k": 3}))
            assert found["version"] == "v1" and found["mode"] == "hybrid" and len(found["results"]) == 3
            top = found["results"][0]
            chunk = payload(await client.call_tool("get_chunk", {"chunk_id": top["chunk_id"]}))
            assert chunk["version"] == "v1" and chunk["uri"] == top["uri"] and "def hypotenuse" in chunk["text"]
            symbols = payload(await client.call_tool("find_symbol", {"name": "hypotenuse"}))
            assert symbols["matches"][0]["role"] == "definition"
            assert {"chunk_id", "uri", "start_line", "end_line"} <= set(symbols["matches"][0])

            bad = await client.call_tool("search_code", {"query": "x", "k": 0})
            assert bad.is_error and "k must be between 1 and 1000, got 0" in bad.content[0].text
            missing = await client.call_tool("get_chunk", {"chunk_id": 12345})
            assert missing.is_error and "version v1 has no chunk 12345" in missing.content[0].text

            done = subprocess.run([*INDEXCTL, "publish", "v2"], env=cli_env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            published = time.monotonic()
            while True:
                found = payload(await client.call_tool("search_code", {"query": "split text into words"}))
                if found["version"] == "v2":
                    break
                assert time.monotonic() - published < 2.0, "the MCP server still answers from v1"
                await anyio.sleep(0.05)
            chunk = payload(await client.call_tool("get_chunk", {"chunk_id": found["results"][0]["chunk_id"]}))
            assert chunk["version"] == "v2"

    anyio.run(session)


def test_lines_that_are_not_json_rpc_get_their_json_rpc_error(root: LifecycleRoot, cli_env: dict[str, str]) -> None:
    lines = [
        b"this is not json",
        b"[" * 100_000 + b"]" * 100_000,  # nested too deeply to parse
        b'{"jsonrpc": "2.0", "id": 7, "method": 12}',  # JSON, but no JSON-RPC message
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"},
                },
            }
        ).encode(),
    ]
    done = subprocess.run(
        [*INDEXCTL, "mcp"], env=cli_env, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120
    )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a.get("id"), a.get("error", {}).get("code")) for a in answers] == [
        (None, -32700),
        (None, -32700),
        (7, -32600),
        (1, None),  # the server still answers what follows
    ], done.stderr
    assert answers[-1]["result"]["serverInfo"]["name"] == "kg-assets"


def test_get_chunk_of_an_id_beyond_64_bits_says_why(served_root: LifecycleRoot, cli_env: dict[str, str]) -> None:
    params = StdioServerParameters(command=sys.executable, args=[*INDEXCTL[1:], "mcp"], env=cli_env)

    async def session() -> None:
        async with Client(params, read_timeout_seconds=120) as client:
            result = await client.call_tool("get_chunk", {"chunk_id": 10**30})
            assert result.is_error
            assert f"chunk id {10**30} is not a signed 64-bit integer" in result.content[0].text

    anyio.run(session)
