"""The forum as the HTTP layer and scripts see it: submit a write and wait for it, and read.

A write is durable once the intake answers.  The caller then waits (up to
``forum.write_wait_ms``) for the verdict on its event: ``applied`` once the ``thread_views``
projection committed it, or ``rejected``/``unchanged`` from the handler.  If the wait runs
out — Redis is down, say — the result is ``accepted``: the write will apply later.  That
protocol is written once, without I/O (:func:`intake_timeout`, :func:`wait_outcome`);
:meth:`ForumService.submit` (asyncio) and :meth:`ForumService.submit_sync` (a plain thread)
differ only in how they ask, wait and read.

:class:`OutcomeBoard` is the sink that matches verdicts to waiters.  It also remembers
recent verdicts, because a fast pipeline may decide before the caller starts waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple, TypeVar

import msgspec

from metawsm.actors.bridge import ThreadReply
from metawsm.actors.forum.messages import INTAKE, RELAY, Accepted, Rebuild, ReplayParked, Submit, projection_path
from metawsm.actors.system import ActorSystem
from metawsm.forum import seen
from metawsm.forum.errors import ForumError
from metawsm.forum.messages import EventMessage
from metawsm.forum.projections.registry import PROJECTION_NAMES, create_projection
from metawsm.forum.reads import ForumReader
from metawsm.forum.views import SeenMarker, ThreadView
from metawsm.forum.write_model import CommandOutcome, recorded_outcomes
from metawsm.idempotency_keys import KeyClaim
from metawsm.services import Services

T = TypeVar("T")
RECENT_LIMIT = 50_000
MIN_INTAKE_TIMEOUT = 5.0  # seconds the intake may take to answer, however short the wait


class Verdict(msgspec.Struct, frozen=True):
    status: Literal["applied", "unchanged", "rejected"]
    thread_id: str
    sequence: int | None = None
    error_code: str = ""
    error_message: str = ""
    error_status: int = 400
    # The thread as it was read right after the verdict (read-your-writes), when someone was
    # waiting for it; None otherwise (the caller then reads it itself).
    thread: ThreadView | None = None


class WriteResult(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["applied", "accepted"]
    thread_id: str
    event_id: str
    thread: ThreadView | None = None


# -- the write-wait protocol ---------------------------------------------------------------


def intake_timeout(budget: float) -> float:
    """How long to wait for the intake's answer to a write whose wait budget is ``budget``."""
    return max(budget, MIN_INTAKE_TIMEOUT)


class WaitOutcome(NamedTuple):
    """What a write's caller gets once its wait is over.

    ``read`` names a thread to read into ``result.thread`` first (:meth:`complete`); it is
    ``""`` when ``result`` is final.
    """

    result: WriteResult
    read: str = ""

    def complete(self, thread: ThreadView) -> WriteResult:
        return msgspec.structs.replace(self.result, thread=thread)


def wait_outcome(accepted: Accepted, verdict: Verdict | None) -> WaitOutcome:
    """Decide a write's result from the intake's answer and the verdict waited for.

    The caller waits for the verdict on ``accepted.event_id`` unless the intake said the
    write was already applied (an idempotent retry); ``verdict`` is None when it did not wait
    or no verdict came within the budget.

    * already applied: ``applied``, with the thread read now;
    * no verdict: ``accepted`` (durable in the outbox; applies when the transport recovers);
    * ``rejected``: raises the handler's refusal as a :class:`ForumError`;
    * ``applied``/``unchanged``: ``applied``, with the view the broker handed over, or the
      thread read now when it handed none over.
    """
    if accepted.already_applied:
        return WaitOutcome(
            WriteResult(status="applied", thread_id=accepted.thread_id, event_id=accepted.event_id),
            read=accepted.thread_id,
        )
    if verdict is None:
        return WaitOutcome(WriteResult(status="accepted", thread_id=accepted.thread_id, event_id=accepted.event_id))
    if verdict.status == "rejected":
        raise ForumError(verdict.error_message, code=verdict.error_code, status=verdict.error_status)
    thread_id = verdict.thread_id or accepted.thread_id
    result = WriteResult(status="applied", thread_id=thread_id, event_id=accepted.event_id, thread=verdict.thread)
    return WaitOutcome(result, read="" if verdict.thread is not None else thread_id)


class OutcomeBoard:
    """Thread-safe rendezvous between pipeline verdicts and callers waiting for them.

    Read-your-writes: an ``unchanged`` verdict (a same-state change, closing a closed thread,
    an answer whose state was already answered, ...) carries the thread's last event sequence
    and is held until ``thread_views`` has applied that far, so the view the caller then
    reads includes everything the verdict was based on.

    Verdicts travel as tells through the broker, which loses what is in its mailbox when it
    (or a projection) restarts; :meth:`resync`, run by the broker on start and every second
    while someone waits, settles such waiters from SQLite.

    ``read_views`` (optional) reads thread views on the calling thread — the broker's — for
    the verdicts someone is waiting for, one read per thread and batch, and hands them over
    with the verdict: the waiting HTTP handler then answers at once instead of hopping to a
    reader thread and back.  Verdicts remembered for late watchers do not keep the view.
    """

    def __init__(self, projected: int = 0, read_views: Callable[[list[str]], dict[str, ThreadView]] | None = None
                 ) -> None:
        self._read_views = read_views
        self.reads_on_broker = read_views is not None  # the broker calls quicker sinks first
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[Verdict], None]]] = {}
        self._recent: OrderedDict[str, Verdict] = OrderedDict()
        self._projected = projected  # highest sequence thread_views is known to have applied
        self._held: list[tuple[int, str, Verdict]] = []

    # EventSink
    def events_applied(self, projection: str, events: list[EventMessage]) -> None:
        if projection != "thread_views" or not events:
            return
        verdicts = [
            (event.envelope.event_id,
             Verdict(status="applied", thread_id=event.envelope.thread_id, sequence=event.sequence))
            for event in events
        ]
        self._settle_all(self._with_views(verdicts))
        self._advance(max(event.sequence for event in events))

    def commands_decided(self, outcomes: list[CommandOutcome]) -> None:
        ready: list[tuple[str, Verdict]] = []
        for outcome in outcomes:
            if outcome.status == "applied":
                continue  # announced by thread_views once visible
            verdict = Verdict(
                status="rejected" if outcome.status == "rejected" else "unchanged",
                thread_id=outcome.thread_id,
                sequence=outcome.sequence,
                error_code=outcome.error_code,
                error_message=outcome.error_message,
                error_status=outcome.error_status or 400,
            )
            if verdict.status == "unchanged" and outcome.sequence:
                with self._lock:
                    hold = outcome.sequence > self._projected
                    if hold:
                        self._held.append((outcome.sequence, outcome.event_id, verdict))
                if hold:
                    continue
            ready.append((outcome.event_id, verdict))
        self._settle_all(self._with_views(ready))

    def resync(self, conn: Any) -> None:
        """Settle waiters from SQLite: events thread_views applied, verdicts the handler recorded."""
        with self._lock:
            waiting = list(self._waiters)
            held = bool(self._held)
        if not waiting and not held:
            return
        row = conn.execute(
            "SELECT last_sequence FROM forum_projection_checkpoints WHERE projection_name = 'thread_views'"
        ).fetchone()
        if row is not None:
            self._advance(int(row[0]))
        for start in range(0, len(waiting), 500):
            chunk = waiting[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for event_id, thread_id, sequence in conn.execute(
                "SELECT e.event_id, e.thread_id, e.sequence FROM forum_projection_events p"
                " JOIN forum_events e ON e.event_id = p.event_id"
                f" WHERE p.projection_name = 'thread_views' AND p.event_id IN ({marks})",
                chunk,
            ).fetchall():
                self._settle(event_id, Verdict(status="applied", thread_id=thread_id or "", sequence=sequence))
        self.commands_decided(recorded_outcomes(conn, waiting))

    def waiting(self) -> int:
        with self._lock:
            return sum(len(callbacks) for callbacks in self._waiters.values())

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

    def _advance(self, sequence: int) -> None:
        with self._lock:
            if sequence <= self._projected:
                return
            self._projected = sequence
            ready = [item for item in self._held if item[0] <= sequence]
            if ready:
                self._held = [item for item in self._held if item[0] > sequence]
        if ready:
            self._settle_all(self._with_views([(event_id, verdict) for _, event_id, verdict in ready]))

    def _with_views(self, verdicts: list[tuple[str, Verdict]]) -> list[tuple[str, Verdict]]:
        """Attach the thread view to the verdicts someone waits for (not to rejections)."""
        if self._read_views is None or not verdicts:
            return verdicts
        with self._lock:
            wanted = {v.thread_id for event_id, v in verdicts
                      if v.status != "rejected" and v.thread_id and event_id in self._waiters}
        if not wanted:
            return verdicts
        try:
            views = self._read_views(sorted(wanted))
        except Exception:  # noqa: BLE001 - the waiting caller reads the view itself
            return verdicts
        return [
            (event_id, msgspec.structs.replace(verdict, thread=views[verdict.thread_id]))
            if verdict.status != "rejected" and verdict.thread_id in views else (event_id, verdict)
            for event_id, verdict in verdicts
        ]

    def _settle(self, event_id: str, verdict: Verdict) -> None:
        self._settle_all([(event_id, verdict)])

    def _settle_all(self, verdicts: list[tuple[str, Verdict]]) -> None:
        calls: list[tuple[list[Callable[[Verdict], None]], Verdict]] = []
        with self._lock:
            for event_id, verdict in verdicts:
                self._recent[event_id] = verdict if verdict.thread is None else msgspec.structs.replace(
                    verdict, thread=None)
                callbacks = self._waiters.pop(event_id, None)
                if callbacks:
                    calls.append((callbacks, verdict))
            while len(self._recent) > RECENT_LIMIT:
                self._recent.popitem(last=False)
        for callbacks, verdict in calls:
            for callback in callbacks:
                callback(verdict)


class ForumService:
    def __init__(self, system: ActorSystem, services: Services, read_threads: int = 4) -> None:
        self.system = system
        self.services = services
        self._sink_local = threading.local()  # the broker thread's reader (see _views_here)
        self.board = OutcomeBoard(read_views=self._views_here)
        services.sinks.add(self.board)
        conn = services.db.connect()
        try:  # after registering, so no thread_views progress falls between the two
            row = conn.execute(
                "SELECT last_sequence FROM forum_projection_checkpoints WHERE projection_name = 'thread_views'"
            ).fetchone()
        finally:
            conn.close()
        self.board._advance(int(row[0]) if row is not None else 0)
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
            reader = self._local.reader = ForumReader(self._connection())
        return query(reader)

    def _connection(self) -> Any:
        """This thread's connection: opened on first use, closed by :meth:`close`."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.services.db.connect()
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _views_here(self, thread_ids: list[str]) -> dict[str, ThreadView]:
        """Thread views read on the calling thread (the broker's), with a connection of its own.

        Not registered for :meth:`close`: it lives as long as that thread (a restarted broker
        runs on a new thread, and the old thread's connection goes with its thread-locals).
        """
        reader = getattr(self._sink_local, "reader", None)
        if reader is None:
            reader = self._sink_local.reader = ForumReader(self.services.db.connect())
        views: dict[str, ThreadView] = {}
        for thread_id in thread_ids:
            views[thread_id] = reader.get_thread(thread_id)
        return views

    async def read_async(self, query: Callable[[ForumReader], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.read, query)

    # -- writes ---------------------------------------------------------------------------

    async def submit(
        self, request: Any, thread_id: str = "", default_actor_type: str = "human", wait: float | None = None,
        idempotency: KeyClaim | None = None,
    ) -> WriteResult:
        """Submit a write and wait for its verdict (see :func:`wait_outcome`).

        With ``idempotency``, a key already recorded answers with the write it recorded: the
        verdict waited for is that write's, and nothing new is written.
        """
        budget = self.write_wait if wait is None else wait
        accepted: Accepted = await self.system.ask_async(
            INTAKE, Submit(request, thread_id, default_actor_type, idempotency), timeout=intake_timeout(budget)
        )
        verdict = None if accepted.already_applied else await self._verdict_async(accepted.event_id, budget)
        outcome = wait_outcome(accepted, verdict)
        if not outcome.read:
            return outcome.result
        return outcome.complete(await self.read_async(lambda r: r.get_thread(outcome.read)))

    def submit_sync(
        self, request: Any, thread_id: str = "", default_actor_type: str = "human", wait: float | None = None
    ) -> WriteResult:
        """Blocking variant for scripts and tests (never call it on the event loop)."""
        budget = self.write_wait if wait is None else wait
        accepted: Accepted = self.system.ask(
            INTAKE, Submit(request, thread_id, default_actor_type), timeout=intake_timeout(budget)
        )
        verdict = None if accepted.already_applied else self._verdict_sync(accepted.event_id, budget)
        outcome = wait_outcome(accepted, verdict)
        if not outcome.read:
            return outcome.result
        return outcome.complete(self.read(lambda r: r.get_thread(outcome.read)))

    async def _verdict_async(self, event_id: str, budget: float) -> Verdict | None:
        """The verdict on ``event_id`` within ``budget`` seconds, or None."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()

        def settle(verdict: Verdict) -> None:
            loop.call_soon_threadsafe(_set_once, future, verdict)

        cancel = self.board.watch(event_id, settle)
        try:
            return await asyncio.wait_for(future, budget)
        except TimeoutError:
            cancel()
            return None

    def _verdict_sync(self, event_id: str, budget: float) -> Verdict | None:
        """The verdict on ``event_id`` within ``budget`` seconds, or None (blocks this thread)."""
        reply = ThreadReply()
        cancel = self.board.watch(event_id, reply.resolve)
        answered, verdict = reply.wait(budget)
        if not answered:
            cancel()
            return None
        outcome: Verdict | None = verdict
        return outcome

    # -- the one direct write --------------------------------------------------------------

    async def mark_seen(
        self, thread_id: str, viewer_type: Any, viewer_id: Any, sequence: Any = None
    ) -> SeenMarker:
        """Record a viewer's seen marker (:mod:`metawsm.forum.seen`), on a pool thread's connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, lambda: seen.mark_seen(self._connection(), thread_id, viewer_type, viewer_id, sequence)
        )

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


def _set_once(future: asyncio.Future[Verdict], verdict: Verdict) -> None:
    if not future.done():
        future.set_result(verdict)
