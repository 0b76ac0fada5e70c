#!/usr/bin/env python3
"""Drives Guild's MCP server with the official MCP Python SDK client (PyPI `mcp`), as an agent
would, and prints what it saw as one JSON object on stdout for tests/all/mcp.rs to check.

    client.py stdio GUILD_BINARY [GUILD_ARGS...]   launch `guild mcp ...` and talk over stdio
    client.py http URL TOKEN UPLOAD.wasm           talk to a daemon's /mcp with a bearer token

The scenario: list the tools; call each example tool; a denial and a limit hit (tool errors,
not protocol errors); invalid input; an unknown tool (a protocol error); then a long run that
reports progress and is cancelled once it is under way (asleep, and computing). Over HTTP it first listens
for tool list changes and uploads UPLOAD.wasm through the daemon's API (`POST /v1/tools`): the
server must announce notifications/tools/list_changed, and the new tool is then listed.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

# Each example tool with an input it can answer; `wc`, `grep` and `hash` read the `/data` mount.
CALLS = {
    "echo": ("echo", {"message": "hello from an MCP client"}),
    "wc": ("wc", {"path": "/data"}),
    "grep": ("grep", {"pattern": "guild", "path": "/data"}),
    "hash": ("hash", {"text": "abc"}),
    "json_query": ("json-query", {"document": {"a": [1, 2, 3]}, "query": "a[1]"}),
    # No --allow-host: the egress rules deny it.
    "denied": ("http-get", {"url": "http://127.0.0.1:9/"}),
    # Spins until its fuel runs out.
    "limit": ("hostile", {"attack": "loop"}),
    "invalid": ("echo", {"unexpected": 1}),
}


def result_json(result):
    return {
        "is_error": result.is_error,
        "text": [block.text for block in result.content if getattr(block, "type", "") == "text"],
        "structured": result.structured_content,
        "meta": result.meta,
    }


async def scenario(client):
    report = {"protocol_version": client.protocol_version}
    listed = await client.list_tools()
    report["tools"] = {
        tool.name: {
            "description": tool.description,
            "input_schema": tool.input_schema,
            "output_schema": tool.output_schema,
            "meta": tool.meta,
        }
        for tool in listed.tools
    }
    report["calls"] = {}
    for key, (name, arguments) in CALLS.items():
        report["calls"][key] = result_json(await client.call_tool(name, arguments))
    try:
        await client.call_tool("no_such_tool", {})
        report["unknown_tool"] = "no error"
    except MCPError as error:
        report["unknown_tool"] = str(error)
    # A run asleep in a host call, cancelled at the second progress report (~500 ms in), and
    # one computing, cancelled at the first (it would spin until its fuel runs out).
    report["cancel"] = await cancel_long_run(client, "sleep", reports=2)
    report["cancel_computing"] = await cancel_long_run(client, "loop", reports=1)
    return report


async def cancel_long_run(client, attack, reports):
    """Call a long `hostile` run asking for progress; cancel it after `reports` reports."""
    progress = []
    first = anyio.Event()

    async def on_progress(value, total, message):
        progress.append({"progress": value, "total": total, "message": message})
        if len(progress) >= reports:
            first.set()

    outcome = {"finished": None}
    async with anyio.create_task_group() as group:

        async def call():
            result = await client.call_tool("hostile", {"attack": attack}, progress_callback=on_progress)
            outcome["finished"] = result_json(result)

        group.start_soon(call)
        with anyio.fail_after(30):
            await first.wait()
        group.cancel_scope.cancel()
    # The cancellation reaches the server as notifications/cancelled (or a closed stream); give
    # it a moment to stop the run and seal its bundle before the session ends.
    await anyio.sleep(1)
    return {"progress": progress, "finished": outcome["finished"]}


async def upload_announced(client, http, url, component):
    """Listen for tool list changes, upload `component`, and wait for the announcement."""
    api = url.removesuffix("/mcp") + "/v1/tools"
    with open(component, "rb") as file:
        body = file.read()
    try:
        async with client.listen(tools_list_changed=True) as subscription:
            response = await http.post(api, content=body)
            response.raise_for_status()
            with anyio.fail_after(20):
                async for event in subscription:
                    return {"announced": True, "event": str(event)}
    except Exception as error:  # reported, and the test says what went wrong
        return {"announced": False, "error": f"{type(error).__name__}: {error}"}
    return {"announced": False, "error": "the subscription ended without an event"}


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        server = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with Client(server, cache=None) as client:
            report = await scenario(client)
    elif mode == "http":
        url, token, component = sys.argv[2], sys.argv[3], sys.argv[4]
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                announced = await upload_announced(client, http, url, component)
                report = await scenario(client)
                report["list_changed"] = announced
    else:
        raise SystemExit(f"unknown mode {mode!r}; use stdio or http")
    print(json.dumps(report))


if __name__ == "__main__":
    anyio.run(main)
