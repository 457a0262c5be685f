"""What every request handler can reach: the daemon's actor system and services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from metawsm.actors.system import ActorSystem
from metawsm.forum.service import ForumService
from metawsm.services import Services


@dataclass
class ApiContext:
    system: ActorSystem
    services: Services
    forum: ForumService
    metrics: Any
    hub: Any = None
    runs: Any = None  # the runs facade, once runs exist
    fault_injection: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


CONTEXT: web.AppKey[ApiContext] = web.AppKey("metawsm_context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
