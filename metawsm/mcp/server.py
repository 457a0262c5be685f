"""The MCP server: the SDK's low-level ``Server`` with the forum tools and the brief resource.

The low-level server (rather than the SDK's decorator layer) lets the tools' schemas come from
the msgspec Structs in :mod:`metawsm.mcp.args` and lets every call find its agent per request:
over stdio the session's agent, over HTTP the agent of the request's token
(``caller_of(ctx)``).  Every failure of a tool is answered as a tool error (``isError``) with
the daemon's or the tool's own sentence; nothing a model sends can end the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import mcp_types as types
import msgspec
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from metawsm import __version__
from metawsm.mcp.args import decode, input_schema
from metawsm.mcp.caller import Caller, IdentityMissing
from metawsm.mcp.client import DaemonApi, DaemonError
from metawsm.mcp.tools import TOOLS, AgentTools, ToolFailure

log = logging.getLogger("metawsm.mcp")

SERVER_NAME = "metawsm"
BRIEF_URI = "metawsm://brief"
INSTRUCTIONS = (
    "metawsm supervises you: a human operator watches this run through a forum. Use ask when you need a "
    "decision, then wait_for_answer until it is answered; post_progress at milestones; get_feedback between "
    "steps; when the work is committed, complete and then validate with the brief's done criteria "
    "(get_brief)."
)


@dataclass(frozen=True)
class Runtime:
    """What the server keeps for its lifetime: one HTTP client for every call to the daemon."""

    http: aiohttp.ClientSession


Context = ServerRequestContext[Runtime]
CallerOf = Callable[[Context], Caller]

_SPECS = {spec.name: spec for spec in TOOLS}
_TOOLS = [
    types.Tool(
        name=spec.name, title=spec.title, description=spec.description, input_schema=input_schema(spec.args),
        annotations=types.ToolAnnotations(title=spec.title, read_only_hint=spec.read_only, destructive_hint=False,
                                          open_world_hint=False),
    )
    for spec in TOOLS
]
_BRIEF = types.Resource(
    uri=BRIEF_URI, name="brief", title="Run brief", mime_type="application/json",
    description="The run's brief and your workspace paths (the same as the get_brief tool).")


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _result(value: dict[str, Any]) -> types.CallToolResult:
    text = json.dumps(value, ensure_ascii=False)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=value)


def build_server(caller_of: CallerOf) -> Server[Runtime]:
    """A server whose calls act for ``caller_of(ctx)``."""

    @asynccontextmanager
    async def lifespan(_server: Server[Runtime]) -> AsyncIterator[Runtime]:
        async with aiohttp.ClientSession() as http:
            yield Runtime(http)

    def tools_for(ctx: Context) -> AgentTools:
        caller = caller_of(ctx)
        caller.require_identity()
        return AgentTools(DaemonApi(ctx.lifespan_context.http, caller))

    async def list_tools(_ctx: Context, _params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=_TOOLS)

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        spec = _SPECS.get(params.name)
        if spec is None:
            return _error(f"unknown tool {params.name!r}; the tools are {', '.join(_SPECS)}")
        try:
            args = decode(spec.args, params.arguments)
            return _result(await spec.run(tools_for(ctx), args))
        except msgspec.ValidationError as error:
            return _error(f"invalid arguments for {spec.name}: {error}")
        except (DaemonError, ToolFailure, IdentityMissing) as error:
            return _error(str(error))
        except Exception as error:  # a bug in one call must not end the agent's server: logged, answered
            log.exception("tool %s failed", spec.name)
            return _error(f"{spec.name} failed inside metawsm mcp ({type(error).__name__}: {error}); "
                          "this is a bug, the server keeps running")

    async def list_resources(_ctx: Context, _params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[_BRIEF])

    async def read_resource(ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        if str(params.uri) != BRIEF_URI:
            raise MCPError(types.INVALID_PARAMS, f"unknown resource {params.uri}; the resource is {BRIEF_URI}")
        try:
            brief = await tools_for(ctx).get_brief()
        except (DaemonError, IdentityMissing) as error:
            raise MCPError(types.INTERNAL_ERROR, str(error)) from None
        return types.ReadResourceResult(contents=[types.TextResourceContents(
            uri=BRIEF_URI, mime_type="application/json", text=json.dumps(brief, ensure_ascii=False))])

    return Server(
        SERVER_NAME, version=__version__, instructions=INSTRUCTIONS, lifespan=lifespan,
        on_list_tools=list_tools, on_call_tool=call_tool,
        on_list_resources=list_resources, on_read_resource=read_resource,
    )
