"""A declarative table of routes: aiohttp routing and the OpenAPI document both come from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


class RouteTable:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(self, route: Route) -> None:
        self.routes.append(route)

    def extend(self, routes: list[Route]) -> None:
        self.routes.extend(routes)

    def install(self, app: web.Application) -> None:
        for route in self.routes:
            if route.method == "GET":
                # GET answers HEAD too (``curl -I``, uptime probes), as a web server should.
                app.router.add_get(route.path, route.handler, allow_head=True)
            else:
                app.router.add_route(route.method, route.path, route.handler)
