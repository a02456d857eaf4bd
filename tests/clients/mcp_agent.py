"""An MCP client for the end-to-end tests, on the official Python SDK.

    mcp_agent.py stdio MODE COMMAND [ARG...]   spawn the server, talk on stdio
    mcp_agent.py http MODE URL                 streamable HTTP, bearer token
                                               from AIRLOCK_TOKEN

MODE is the SDK's connect mode: "legacy" (the initialize handshake, one
session) or "auto" (server/discover, then per-request envelopes).

It connects, prints one JSON line ({"server": name, "version": ...}), then
reads one JSON command per line on stdin and prints one JSON line each:
    {"list_tools": true}                 -> {"tools": [names]}
    {"tool": NAME, "args": {...}}        -> {"is_error": bool, "structured": ..., "text": "..."}
    {"parallel": N, "tool": ..., "args"} -> {"results": [N of the above]}, called at once
    {"give_up_after_s": S, "tool": ..., "args"} -> the result, or {"gave_up": true}
                                         when the call was cancelled after S seconds
Anything that raises prints {"exception": "..."}; the loop goes on. A
connection that fails prints {"connect_error": "..."} and ends.
"""

import asyncio
import json
import os
import sys

import mcp
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def say(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def main():
    kind, mode = sys.argv[1], sys.argv[2]
    info = mcp.Implementation(name="airlock-e2e-agent", version="1.0")
    if kind == "stdio":
        server = StdioServerParameters(command=sys.argv[3], args=sys.argv[4:], env=dict(os.environ))
    else:
        token = os.environ["AIRLOCK_TOKEN"]
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        server = streamable_http_client(sys.argv[3], http_client=http)
    try:
        async with Client(server, client_info=info, mode=mode, cache=None) as client:
            await serve(client, mode)
    except Exception as e:  # noqa: BLE001 - a refused connection is what some tests expect
        say({"connect_error": describe(e)})


def describe(e):
    """An exception, with those of a group, as one line."""
    inner = getattr(e, "exceptions", None)
    if inner:
        return "; ".join(describe(x) for x in inner)
    return f"{type(e).__name__}: {e}"


def shape(r):
    """A tool result (or the exception a call raised) as JSON."""
    if isinstance(r, BaseException):
        return {"exception": describe(r)}
    text = " ".join(c.text for c in r.content if getattr(c, "type", "") == "text")
    return {"is_error": r.is_error, "structured": r.structured_content, "text": text}


async def serve(client, mode):
    info = client.server_info
    say({"server": info.name if info else None, "mode": mode, "protocol": client.protocol_version})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        command = json.loads(line)
        try:
            if command.get("list_tools"):
                tools = await client.list_tools()
                say({"tools": [t.name for t in tools.tools]})
            elif command.get("parallel"):
                calls = [client.call_tool(command["tool"], command.get("args") or {}) for _ in range(command["parallel"])]
                results = await asyncio.gather(*calls, return_exceptions=True)
                say({"results": [shape(r) for r in results]})
            elif command.get("give_up_after_s"):
                # The MCP client cancels the call (notifications/cancelled).
                call = client.call_tool(command["tool"], command.get("args") or {})
                try:
                    say(shape(await asyncio.wait_for(call, command["give_up_after_s"])))
                except asyncio.TimeoutError:
                    say({"gave_up": True})
            else:
                say(shape(await client.call_tool(command["tool"], command.get("args") or {})))
        except Exception as e:  # noqa: BLE001 - reported to the test, which decides
            say({"exception": describe(e)})


asyncio.run(main())
