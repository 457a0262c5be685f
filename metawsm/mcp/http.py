"""MCP over HTTP on the daemon: ``/mcp``, the SDK's streamable HTTP transport, one agent per token.

For agents that cannot start a local process.  The three routes (POST for JSON-RPC messages, GET
for the server's event stream, DELETE to end a session) are in the route table like every other,
so the Host/Origin checks, the token check and the JSON-writes rule apply before the SDK sees a
request.  The identity is the request's agent token: the operator (or ``serve --no-auth``) is
refused, since the tools act as one agent.  The tools reach the forum through the daemon's own
API on loopback with that same token, so an agent can do through MCP exactly what its token
allows over HTTP, no more.

The SDK costs over a second to import, so nothing of it is loaded until the first request to
``/mcp``: the session manager starts then (its ``run()`` in a task of its own, for the rest of
the daemon's life) and stops when the app is cleaned up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from metawsm.api.auth import identity
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Access, Route
from metawsm.mcp.asgi import serve_asgi
from metawsm.mcp.caller import Caller, IdentityMissing

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from metawsm.mcp.server import Context

log = logging.getLogger("metawsm.api")

MCP_PATH = "/mcp"
CALLER_STATE = "metawsm.caller"  # key of the request's Caller in the ASGI scope's state
SESSION_IDLE_SECONDS = 30 * 60  # a session nobody used for this long is closed (its client starts another)
MAX_SESSIONS = 1000


def _caller_of(ctx: Context) -> Caller:
    """The agent of the HTTP request that carried this MCP message."""
    scope = getattr(ctx.request, "scope", None) or {}
    caller = scope.get("state", {}).get(CALLER_STATE)
    if not isinstance(caller, Caller):
        raise IdentityMissing("this MCP request carries no agent identity")
    return caller


def _new_manager() -> StreamableHTTPSessionManager:
    """Import the SDK and build the session manager (run in a worker thread: the import is slow)."""
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings

    from metawsm.mcp.server import build_server

    return StreamableHTTPSessionManager(
        app=build_server(_caller_of),
        # The daemon's own middlewares checked Host and Origin already (api/security.py).
        security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        session_idle_timeout=SESSION_IDLE_SECONDS,
        max_sessions=MAX_SESSIONS,
    )


class McpEndpoint:
    """The session manager of one app, started on first use."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url  # how the tools reach this daemon's API (loopback)
        self._ready: asyncio.Future[StreamableHTTPSessionManager] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def manager(self) -> StreamableHTTPSessionManager:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._ready), name="mcp-sessions")
        return await asyncio.shield(self._ready)

    async def _run(self, ready: asyncio.Future[StreamableHTTPSessionManager]) -> None:
        try:
            manager = await asyncio.get_running_loop().run_in_executor(None, _new_manager)
            async with manager.run():
                ready.set_result(manager)
                await self._stop.wait()
        except Exception as error:
            if not ready.done():
                log.exception("the MCP endpoint could not start")
                self._ready = None  # the next request tries again
                ready.set_exception(ApiError(503, "unavailable", f"the MCP endpoint could not start: {error}"))
            else:
                log.exception("the MCP session manager failed")
                raise

    async def close(self, _app: web.Application) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # a failure was logged where it happened


MCP_ENDPOINT: web.AppKey[McpEndpoint] = web.AppKey("metawsm_mcp", McpEndpoint)


def install(app: web.Application, server_url: str) -> None:
    endpoint = app[MCP_ENDPOINT] = McpEndpoint(server_url)
    app.on_cleanup.append(endpoint.close)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _serve(request: web.Request) -> web.StreamResponse:
    who = identity(request)
    if not who.is_agent:
        raise ApiError(403, "forbidden", f"{who.describe()} may not use {MCP_PATH}: its tools act as one agent, so "
                                         "it needs that agent's own token (METAWSM_TOKEN in the agent's session)")
    manager = await request.app[MCP_ENDPOINT].manager()
    caller = Caller(server=request.app[MCP_ENDPOINT].server_url, token=_bearer(request), run_id=who.run_id,
                    ticket=who.ticket, agent=who.agent)
    return await serve_asgi(request, manager.handle_request, state={CALLER_STATE: caller},
                            extra={"user": _session_owner(who.run_id, who.ticket, who.agent)})


def _session_owner(run_id: str, ticket: str, agent: str) -> Any:
    """The SDK ties each session to the principal that opened it: here, the agent (a restarted
    agent, with a new token, keeps its sessions; another agent cannot use them)."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    return AuthenticatedUser(AccessToken(token="agent", client_id=f"agent:{run_id}:{ticket}:{agent}", scopes=[]))


# One handler per route: the route table keys each route's access rule by its handler.
async def mcp_post(request: web.Request) -> web.StreamResponse:
    return await _serve(request)


async def mcp_get(request: web.Request) -> web.StreamResponse:
    return await _serve(request)


async def mcp_delete(request: web.Request) -> web.StreamResponse:
    return await _serve(request)


def routes() -> list[Route]:
    # Not in the OpenAPI document: JSON-RPC over one path and server-sent events do not fit it
    # (docs/api.md says so); the MCP SDK's clients describe themselves.
    errors = {401: ErrorResponse, 403: ErrorResponse, 503: ErrorResponse}
    return [
        Route("POST", MCP_PATH, mcp_post, "MCP messages (JSON-RPC) from an agent", "mcp", responses=errors,
              access=Access.AGENT, openapi=False),
        Route("GET", MCP_PATH, mcp_get, "The MCP session's server-sent event stream", "mcp", responses=errors,
              access=Access.AGENT, openapi=False),
        Route("DELETE", MCP_PATH, mcp_delete, "End an MCP session", "mcp", responses=errors,
              access=Access.AGENT, openapi=False),
    ]
