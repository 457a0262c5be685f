"""What the daemon's actors share: settings, the database handle, sinks and live status.

Actors reach it as ``self.system.services``.  Everything here is either immutable or a
small thread-safe object, because many actor threads read it at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from metawsm.forum.event_cache import EventCache
from metawsm.forum.topics import Topics
from metawsm.policy import Policy
from metawsm.store import Database


class EventSink(Protocol):
    """Receives what the pipeline decided; called on actor threads, so it must not block."""

    def events_applied(self, projection: str, events: list[Any]) -> None: ...

    def commands_decided(self, outcomes: list[Any]) -> None: ...


class SinkRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: tuple[EventSink, ...] = ()

    def add(self, sink: EventSink) -> None:
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def remove(self, sink: EventSink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    def all(self) -> tuple[EventSink, ...]:
        return self._sinks


class BusStatus:
    """Live transport health, written by the relay and consumer, read by /health."""

    def __init__(self) -> None:
        self.healthy: bool = False
        self.error: str = ""
        self.redis_url: str = ""
        self.redis_mode: str = ""  # "external" or "embedded"
        self.redis_reason: str = ""  # why this Redis: found at its URL, or started privately and why
        self.consumer_running: bool = False
        self.last_processed_at: str | None = None
        self.total_processed: int = 0
        self.consecutive_errors: int = 0
        self.last_error: str = ""
        self.parked_total: int = 0
        self.stream_pending: int = 0

    def mark_healthy(self) -> None:
        self.healthy = True
        self.error = ""

    def mark_unhealthy(self, error: str) -> None:
        self.healthy = False
        self.error = error


@dataclass
class Services:
    db: Database
    policy: Policy
    redis_url: str
    topics: Topics = field(init=False)
    sinks: SinkRegistry = field(default_factory=SinkRegistry)
    bus: BusStatus = field(default_factory=BusStatus)
    debug: bool = False
    embedded_redis: Any = None  # RedisProcess when the daemon runs its own Redis
    policy_path: str = ""
    server_url: str = "http://127.0.0.1:3001"  # given to agents as METAWSM_SERVER
    base_dir: str = "."  # where relative policy paths (workspace root) are resolved
    namespace_claim: Any = None  # NamespaceClaim, refreshed by the outbox relay
    event_cache: EventCache = field(default_factory=EventCache)  # log rows the projections share

    def __post_init__(self) -> None:
        t = self.policy.forum.topics
        self.topics = Topics(t.command_prefix, t.event_prefix, t.integration_prefix)
        self.bus.redis_url = self.redis_url

    @property
    def forum(self) -> Any:
        return self.policy.forum
