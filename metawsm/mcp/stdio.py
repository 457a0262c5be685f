"""``metawsm mcp``: the MCP server over stdio, acting for the agent of the session it runs in.

Its agent client (Claude Code, Codex, ...) starts it as a child process and talks JSON-RPC over
its stdin and stdout, so nothing else may ever be written to stdout: logs go to stderr.
"""

from __future__ import annotations

import anyio
from mcp.server.stdio import stdio_server

from metawsm.mcp.caller import Caller
from metawsm.mcp.server import build_server


def run_stdio(caller: Caller) -> None:
    """Serve until the client closes stdin."""
    server = build_server(lambda _ctx: caller)

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
