"""A declarative table of routes: aiohttp routing and the OpenAPI document both come from it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access(Enum):
    """Who may call a route (checked by ``api/auth.py`` before the handler runs)."""

    PUBLIC = "public"  # no token: liveness, how to authenticate, the UI's page
    AGENT = "agent"  # the operator, or an agent token (the handler confines the agent to itself)
    OPERATOR = "operator"  # the operator token (or the UI's session cookie) only


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    query: type | None = None  # msgspec Struct of query parameters
    body: type | None = None  # msgspec Struct of the JSON body
    responses: dict[int, Any] = field(default_factory=dict)  # status → Struct type, or a str media type
    description: str = ""
    operation_id: str = ""
    path_enums: dict[str, list[str]] = field(default_factory=dict)  # path parameter → allowed values
    # Default: reads are open to agents, writes are the operator's; routes say otherwise explicitly.
    access: Access | None = None
    # False for a route OpenAPI cannot describe (/mcp: JSON-RPC and event streams); still served.
    openapi: bool = True

    @property
    def effective_access(self) -> Access:
        if self.access is not None:
            return self.access
        return Access.AGENT if self.method == "GET" else Access.OPERATOR


class RouteTable:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        self.routes.append(route)

    def extend(self, routes: list[Route]) -> None:
        self.routes.extend(routes)

    def access_by_handler(self) -> dict[Handler, Access]:
        """Each handler's access rule; a handler serves exactly one route, so this is unambiguous."""
        table: dict[Handler, Access] = {}
        for route in self.routes:
            if route.handler in table:
                raise ValueError(f"handler {route.handler.__name__} serves more than one route")
            table[route.handler] = route.effective_access
        return table

    def install(self, app: web.Application) -> None:
        for route in self.routes:
            if route.method == "GET":
                # GET answers HEAD too (``curl -I``, uptime probes), as a web server should.
                app.router.add_get(route.path, route.handler, allow_head=True)
            else:
                app.router.add_route(route.method, route.path, route.handler)
