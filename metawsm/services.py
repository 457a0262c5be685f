"""What the daemon's actors share: settings, the database handle, sinks and live status.

Actors reach it as ``self.system.services``.  Everything here is either immutable or a
small thread-safe object, because many actor threads read it at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

from metawsm.auth.tokens import TokenRegistry
from metawsm.forum.event_cache import EventCache
from metawsm.forum.topics import Topics
from metawsm.operator.feed import DecisionFeed
from metawsm.policy import LoadedPolicy, Policy, policy_changes, policy_digest, read_policy_file, with_sections_of
from metawsm.policy_compat import inert_warning
from metawsm.runs.pane_board import PaneBoards
from metawsm.store import Database
from metawsm.store.faults import StorageStatus

log = logging.getLogger("metawsm.policy")


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


def _file_digest(path: str) -> str | None:
    """The policy digest of the file now; "" when there is none, None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return policy_digest(file.read())
    except FileNotFoundError:
        return ""
    except OSError:
        return None  # never equal to a digest: read_policy_file says what is wrong


class PolicyWatch:
    """The daemon's policy file, re-read when a run is planned.

    A run gets the file as it is when the run is planned; an invalid file refuses that run (the
    caller gets the :class:`~metawsm.policy.PolicyError`) and the daemon keeps the policy it has.
    The file is decoded again only when its content changed since the last successful read: a
    digest of the bytes, because modification times tick too coarsely to tell two quick saves of
    the same size apart (and reading a few kilobytes per planned run costs nothing).

    The sections the daemon's actors were built from at start (``forum``, ``supervision``,
    ``debug``) stay as they were: their changes are logged once, with the advice to restart.
    """

    _UNREAD: Any = object()

    def __init__(self, path: str, startup: Policy) -> None:
        self.path = path
        self.startup = startup
        self._lock = threading.Lock()
        # Digest of the file behind the daemon's policy; unknown (read at the first refresh) unless
        # serve says what it read at start-up.
        self._seen: Any = self._UNREAD
        self._inert_reported: set[str] = set()
        self._restart_reported: dict[str, Any] = {}  # field -> the file's value last reported

    def note_startup(self, loaded: LoadedPolicy) -> None:
        """What ``serve`` read at start-up: the file's digest, and the inert fields it already
        warned about (not repeated by a reload)."""
        with self._lock:
            self._seen = loaded.digest
            self._inert_reported.update(loaded.inert_fields)

    def refresh(self, current: Policy) -> Policy:
        """The policy for a run planned now; ``current`` when the file did not change."""
        if not self.path:
            return current  # a policy given in-process (tests): there is no file to follow
        with self._lock:
            if _file_digest(self.path) == self._seen:
                return current
            loaded = read_policy_file(self.path)  # PolicyError: refused, and read again next time
            self._seen = loaded.digest  # of the bytes decoded, even if the file changed meanwhile
            self._report(loaded)
            return with_sections_of(loaded.policy, self.startup)

    def _report(self, loaded: LoadedPolicy) -> None:
        for name in loaded.inert_fields:
            if name not in self._inert_reported:
                self._inert_reported.add(name)
                log.warning("%s", inert_warning(name))
        pending = {c.field: c.after for c in policy_changes(self.startup, loaded.policy) if c.applies == "restart"}
        for name, value in pending.items():
            if self._restart_reported.get(name, self._UNREAD) != value:
                log.warning("policy: %s changed in %s; restart metawsm serve to apply it", name, self.path)
        # A field set back to its start-up value is forgotten, so changing it again is reported again.
        self._restart_reported = pending


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
    policy_watch: PolicyWatch = field(init=False)
    tokens: TokenRegistry | None = None  # the credentials the API accepts; runs mint agent tokens here
    auth_enabled: bool = True  # False only with serve --no-auth (loopback): agents then get no token
    storage: StorageStatus = field(init=False)  # set while the database cannot be written (disk full)
    decisions: DecisionFeed = field(default_factory=DecisionFeed)  # the operator's decisions, as they are stored
    pane_boards: PaneBoards = field(default_factory=PaneBoards)  # one tmux listing serves every agent's poll

    def __post_init__(self) -> None:
        t = self.policy.forum.topics
        self.topics = Topics(t.command_prefix, t.event_prefix, t.integration_prefix)
        self.bus.redis_url = self.redis_url
        self.policy_watch = PolicyWatch(self.policy_path, self.policy)
        self.storage = StorageStatus(self.db.path)

    def policy_for_new_run(self) -> Policy:
        """Re-read the policy file if it changed, make it the daemon's, and return it.

        Raises :class:`~metawsm.policy.PolicyError` (one line) when the file is invalid; the
        daemon's policy is then left as it was. Called on the RunSupervisor's thread; readers
        elsewhere see either the old or the new policy object, both complete.
        """
        self.policy = self.policy_watch.refresh(self.policy)
        return self.policy

    @property
    def forum(self) -> Any:
        return self.policy.forum
