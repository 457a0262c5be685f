"""The forum as the HTTP layer and scripts see it: submit a write and wait for it, and read.

A write is durable once the intake answers.  The caller then waits (up to
``forum.write_wait_ms``) for the verdict on its event: ``applied`` once the ``thread_views``
projection committed it, or ``rejected``/``unchanged`` from the handler.  If the wait runs
out — Redis is down, say — the result is ``accepted``: the write will apply later.

:class:`OutcomeBoard` is the sink that matches verdicts to waiters.  It also remembers
recent verdicts, because a fast pipeline may decide before the caller starts waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Literal, TypeVar

import msgspec

from metawsm.actors.bridge import ThreadReply
from metawsm.actors.forum.messages import INTAKE, RELAY, Accepted, Rebuild, ReplayParked, Submit, projection_path
from metawsm.actors.system import ActorSystem
from metawsm.forum.errors import ForumError
from metawsm.forum.messages import EventMessage
from metawsm.forum.projections.registry import PROJECTION_NAMES, create_projection
from metawsm.forum.reads import ForumReader
from metawsm.forum.views import ThreadView
from metawsm.forum.write_model import CommandOutcome
from metawsm.services import Services

T = TypeVar("T")
RECENT_LIMIT = 50_000


class Verdict(msgspec.Struct, frozen=True):
    status: Literal["applied", "unchanged", "rejected"]
    thread_id: str
    sequence: int | None = None
    error_code: str = ""
    error_message: str = ""
    error_status: int = 400


class WriteResult(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["applied", "accepted"]
    thread_id: str
    event_id: str
    thread: ThreadView | None = None


class OutcomeBoard:
    """Thread-safe rendezvous between pipeline verdicts and callers waiting for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[Verdict], None]]] = {}
        self._recent: OrderedDict[str, Verdict] = OrderedDict()

    # EventSink
    def events_applied(self, projection: str, events: list[EventMessage]) -> None:
        if projection != "thread_views":
            return
        for event in events:
            self._settle(
                event.envelope.event_id,
                Verdict(status="applied", thread_id=event.envelope.thread_id, sequence=event.sequence),
            )

    def commands_decided(self, outcomes: list[CommandOutcome]) -> None:
        for outcome in outcomes:
            self._settle(
                outcome.event_id,
                Verdict(
                    status="rejected" if outcome.status == "rejected" else "unchanged",
                    thread_id=outcome.thread_id,
                    sequence=outcome.sequence,
                    error_code=outcome.error_code,
                    error_message=outcome.error_message,
                    error_status=outcome.error_status or 400,
                ),
            )

    def watch(self, event_id: str, callback: Callable[[Verdict], None]) -> Callable[[], None]:
        """Call ``callback`` once with the verdict (now, if already known); returns a cancel."""
        with self._lock:
            known = self._recent.get(event_id)
            if known is None:
                self._waiters.setdefault(event_id, []).append(callback)
        if known is not None:
            callback(known)

        def cancel() -> None:
            with self._lock:
                callbacks = self._waiters.get(event_id)
                if callbacks and callback in callbacks:
                    callbacks.remove(callback)
                    if not callbacks:
                        del self._waiters[event_id]

        return cancel

    def _settle(self, event_id: str, verdict: Verdict) -> None:
        with self._lock:
            self._recent[event_id] = verdict
            if len(self._recent) > RECENT_LIMIT:
                self._recent.popitem(last=False)
            callbacks = self._waiters.pop(event_id, ())
        for callback in callbacks:
            callback(verdict)


class ForumService:
    def __init__(self, system: ActorSystem, services: Services, read_threads: int = 4) -> None:
        self.system = system
        self.services = services
        self.board = OutcomeBoard()
        services.sinks.add(self.board)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="forum-read")
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self.write_wait = services.policy.forum.write_wait_ms / 1000.0

    def close(self) -> None:
        self.services.sinks.remove(self.board)
        self._pool.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - closing from another thread is best effort
                    pass
            self._connections.clear()

    # -- reads ----------------------------------------------------------------------------

    def read(self, query: Callable[[ForumReader], T]) -> T:
        """Run ``query`` with this thread's reader (one connection per thread)."""
        reader = getattr(self._local, "reader", None)
        if reader is None:
            conn = self.services.db.connect()
            with self._connections_lock:
                self._connections.append(conn)
            reader = self._local.reader = ForumReader(conn)
        return query(reader)

    async def read_async(self, query: Callable[[ForumReader], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.read, query)

    # -- writes ---------------------------------------------------------------------------

    async def submit(
        self, request: Any, thread_id: str = "", default_actor_type: str = "human", wait: float | None = None
    ) -> WriteResult:
        budget = self.write_wait if wait is None else wait
        accepted: Accepted = await self.system.ask_async(
            INTAKE, Submit(request, thread_id, default_actor_type), timeout=max(budget, 5.0)
        )
        if accepted.already_applied:
            thread = await self.read_async(lambda r: r.get_thread(accepted.thread_id))
            return WriteResult(status="applied", thread_id=accepted.thread_id, event_id=accepted.event_id, thread=thread)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()

        def settle(verdict: Verdict) -> None:
            loop.call_soon_threadsafe(_set_once, future, verdict)

        cancel = self.board.watch(accepted.event_id, settle)
        try:
            verdict = await asyncio.wait_for(future, budget)
        except asyncio.TimeoutError:
            cancel()
            return WriteResult(status="accepted", thread_id=accepted.thread_id, event_id=accepted.event_id)
        return await self._finish(accepted, verdict)

    def submit_sync(
        self, request: Any, thread_id: str = "", default_actor_type: str = "human", wait: float | None = None
    ) -> WriteResult:
        """Blocking variant for scripts and tests (never call it on the event loop)."""
        budget = self.write_wait if wait is None else wait
        accepted: Accepted = self.system.ask(INTAKE, Submit(request, thread_id, default_actor_type), timeout=max(budget, 5.0))
        if accepted.already_applied:
            thread = self.read(lambda r: r.get_thread(accepted.thread_id))
            return WriteResult(status="applied", thread_id=accepted.thread_id, event_id=accepted.event_id, thread=thread)
        reply = ThreadReply()
        cancel = self.board.watch(accepted.event_id, reply.resolve)
        answered, verdict = reply.wait(budget)
        if not answered:
            cancel()
            return WriteResult(status="accepted", thread_id=accepted.thread_id, event_id=accepted.event_id)
        if verdict.status == "rejected":
            raise ForumError(verdict.error_message, code=verdict.error_code, status=verdict.error_status)
        thread_id = verdict.thread_id or accepted.thread_id
        thread = self.read(lambda r: r.get_thread(thread_id))
        return WriteResult(status="applied", thread_id=thread_id, event_id=accepted.event_id, thread=thread)

    async def _finish(self, accepted: Accepted, verdict: Verdict) -> WriteResult:
        if verdict.status == "rejected":
            raise ForumError(verdict.error_message, code=verdict.error_code, status=verdict.error_status)
        thread_id = verdict.thread_id or accepted.thread_id
        thread = await self.read_async(lambda r: r.get_thread(thread_id))
        return WriteResult(status="applied", thread_id=thread_id, event_id=accepted.event_id, thread=thread)

    # -- maintenance ----------------------------------------------------------------------

    async def rebuild(self, projection: str = "") -> list[Any]:
        names = [projection] if projection else list(PROJECTION_NAMES)
        if projection:
            create_projection(projection)  # validates the name with a clear refusal
        results = []
        for name in names:
            results.append(await self.system.ask_async(projection_path(name), Rebuild(), timeout=120.0))
        return results

    async def replay_parked(self, message_id: str) -> Any:
        return await self.system.ask_async(RELAY, ReplayParked(message_id), timeout=10.0)


def _set_once(future: "asyncio.Future[Verdict]", verdict: Verdict) -> None:
    if not future.done():
        future.set_result(verdict)
