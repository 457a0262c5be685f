"""The actor system: root supervisor, name directory, timers, asks, and inspection."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

import pykka

from metawsm.actors.bridge import AsyncReply, ThreadReply
from metawsm.actors.directory import Directory
from metawsm.actors.errors import ActorTimeout, ActorUnavailable
from metawsm.actors.managed import ActorContext
from metawsm.actors.messages import ChildExited, Crash, FailureInfo, Request
from metawsm.actors.node import ActorNode
from metawsm.actors.scheduler import Scheduler
from metawsm.actors.stats import ActorStats
from metawsm.actors.supervisor import ChildSpec, node_for
from metawsm.clock import now_text

if TYPE_CHECKING:  # the runtime never looks inside the services; importing them would pull in the store
    from metawsm.services import Services

log = logging.getLogger("metawsm.supervision")

ROOT_PATH = "root"


class SupervisionSettings(Protocol):
    # Read-only properties, so the frozen policy section and its int fields satisfy it.
    @property
    def max_restarts(self) -> int: ...
    @property
    def within_seconds(self) -> float: ...
    @property
    def backoff_initial_ms(self) -> float: ...
    @property
    def backoff_max_ms(self) -> float: ...


@dataclass(frozen=True)
class DefaultSupervision:
    max_restarts: int = 5
    within_seconds: float = 10
    backoff_initial_ms: float = 100
    backoff_max_ms: float = 10_000


class SystemEvents:
    """Counters and listeners for things an operator should know (restarts, root failure)."""

    def __init__(self) -> None:
        self.restarts_total = 0
        self._listeners: list[Callable[[str, FailureInfo], None]] = []

    def on_restart(self, listener: Callable[[str, FailureInfo], None]) -> None:
        self._listeners.append(listener)

    def actor_restarted(self, path: str, failure: FailureInfo) -> None:
        self.restarts_total += 1
        for listener in list(self._listeners):
            try:
                listener(path, failure)
            except Exception:
                log.debug("restart listener failed", exc_info=True)


class ActorSystem:
    """Owns the root supervisor and offers name-addressed ``tell``/``ask`` to the rest of the code.

    ``services`` is what the daemon's actors share (:class:`~metawsm.services.Services`:
    database, policy, sinks, ...), reached as ``self.system.services``; the runtime itself never
    looks inside it.  Only the runtime's own tests leave it out, and their actors never use it.
    """

    def __init__(self, supervision: SupervisionSettings | None = None, services: Services | None = None) -> None:
        self.supervision = supervision or DefaultSupervision()
        self.services: Services = cast("Services", services)
        self.directory = Directory()
        self.scheduler = Scheduler()
        self.events = SystemEvents()
        self.started_at = now_text()
        self.failed = threading.Event()
        self.failure: FailureInfo | None = None
        self._root_stats = ActorStats()
        self._root_spec: ChildSpec | None = None
        self._root_ref: pykka.ActorRef[Any] | None = None
        self._root_state = "stopped"
        self._fail_lock = threading.Lock()
        self._failing_stop: threading.Thread | None = None  # fail()'s stop of the tree

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, root: ChildSpec, timeout: float = 30.0) -> None:
        """Start the root supervisor (and, through it, the whole tree) and wait for it."""
        self._root_spec = root
        started = threading.Event()
        ctx = ActorContext(
            system=self,
            path=ROOT_PATH,
            child_id=root.id,
            generation=1,
            stats=self._root_stats,
            started=started,
            notify_parent=self._root_exited,
        )
        self._root_state = "running"
        self._root_ref = root.factory(ctx)
        self.directory.bind(ROOT_PATH, self._root_ref)
        started.wait(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        ref, self._root_ref = self._root_ref, None
        self._root_state = "stopped"
        if ref is not None and ref.is_alive():
            try:
                ref.stop(block=True, timeout=timeout)
            except (pykka.Timeout, pykka.ActorDeadError):
                log.warning("root supervisor did not stop within %.0fs", timeout)
        if self._failing_stop is not None:
            self._failing_stop.join(timeout)
        self.scheduler.stop()

    def fail(self, failure: FailureInfo) -> bool:
        """Fail the whole system for a reason no restart can cure (the stream namespace taken
        by another daemon): like the root giving up, ``failed`` is set, health answers
        ``failed`` with ``failure.message`` and ``serve`` exits.  The tree is stopped at once,
        on a thread of its own, since the caller is usually one of its actors and could not
        wait for its own stop; restarting it would only meet the same cause again.  Only the
        first failure counts: False when the system had already failed."""
        with self._fail_lock:
            if self.failed.is_set():
                return False
            self._root_state = "failed"
            self.failure = failure
            log.error("the daemon cannot go on: %s", failure.message)
            self.failed.set()
        ref, self._root_ref = self._root_ref, None
        if ref is not None:
            self._failing_stop = threading.Thread(target=_stop_quietly, args=(ref,), name="metawsm-fail-stop",
                                                  daemon=True)
            self._failing_stop.start()
        return True

    def _root_exited(self, message: ChildExited) -> None:
        with self._fail_lock:
            if self._root_state != "running":
                return
            self._root_state = "failed" if message.failure else "stopped"
            if message.failure is not None:
                self.failure = message.failure
                log.error("root supervisor failed: %s", message.failure.message)
                self.failed.set()

    # -- messaging ------------------------------------------------------------------------

    def tell(self, path: str, message: Any) -> bool:
        """Fire and forget; False when the actor is not running (callers rely on sweeps)."""
        ref = self.directory.get(path)
        if ref is None:
            return False
        try:
            ref.tell(message)
            return True
        except pykka.ActorDeadError:
            return False

    def ask(self, path: str, message: Any, timeout: float = 5.0) -> Any:
        """Blocking ask from a plain thread.  Never call from the asyncio loop."""
        ref = self.directory.lookup(path)
        reply = ThreadReply()
        try:
            ref.tell(Request(body=message, reply=reply))
        except pykka.ActorDeadError:
            raise ActorUnavailable(path, "restarting") from None
        answered, value = reply.wait(timeout)
        if not answered:
            raise ActorTimeout(path, timeout)
        return value

    async def ask_async(self, path: str, message: Any, timeout: float = 5.0) -> Any:
        """Ask from a coroutine without blocking the event loop."""
        ref = self.directory.lookup(path)
        reply = AsyncReply(asyncio.get_running_loop())
        try:
            ref.tell(Request(body=message, reply=reply))
        except pykka.ActorDeadError:
            raise ActorUnavailable(path, "restarting") from None
        try:
            return await asyncio.wait_for(reply.future, timeout)
        except TimeoutError:
            raise ActorTimeout(path, timeout) from None

    def crash(self, path: str, reason: str = "injected fault") -> None:
        """Fault injection: make the actor at ``path`` fail as if its handler raised."""
        ref = self.directory.lookup(path)
        try:
            ref.tell(Crash(reason=reason))
        except pykka.ActorDeadError:
            raise ActorUnavailable(path, "restarting") from None

    # -- inspection -----------------------------------------------------------------------

    def inspect(self) -> ActorNode:
        spec = self._root_spec
        name = (spec.name or spec.id) if spec else "RootSupervisor"
        kind = spec.kind if spec else "supervisor"
        state = "failed" if self.failed.is_set() else self._root_state
        return node_for(name, ROOT_PATH, kind, state, self._root_stats)

    def summary(self) -> dict[str, int]:
        nodes = list(self.inspect().walk())
        return {
            "total": len(nodes),
            "alive": sum(1 for n in nodes if n.state == "running"),
            "restarting": sum(1 for n in nodes if n.state in ("restarting", "starting")),
            "restarts_total": self.events.restarts_total,
        }


def _stop_quietly(ref: pykka.ActorRef[Any], timeout: float = 15.0) -> None:
    try:
        ref.stop(block=True, timeout=timeout)
    except (pykka.Timeout, pykka.ActorDeadError):
        log.warning("root supervisor did not stop within %.0fs", timeout)
