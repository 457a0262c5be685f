"""StreamConsumer: reads every topic stream with one consumer group and routes entries.

Commands go to the CommandHandler, events to every projection.  An entry is acknowledged
only after every actor it was routed to confirmed its commit.  A worker that fails an entry
gets it again after a backoff; after ``forum.max_attempts`` counted failures the entry is
parked (recorded with its error, acknowledged, replayable).  A worker that was merely
unavailable (restarting) gets the entry again without the failure being counted.

The blocking ``XREADGROUP`` runs on a small reader thread of the actor's own (``_Reader``),
which tells the actor what it read; the actor itself never blocks on Redis for long, so
delivery reports (and the next batch they release), acks, stop and fault injection are
handled the moment they arrive instead of after the current read's block.  A read error
ends the reader; the actor handles it (backoff, or recreating lost groups) and starts a
new one.  The reader pauses while too many entries (``delivery.MAX_IN_FLIGHT``) wait for
their workers.

**Projections one after another.**  An event goes to ``thread_views`` first (what callers
and WebSocket clients wait for), then ``control_state`` (what runs and the operator wait for),
then to each other projection in turn, each as soon as the one before has it (those nobody
waits for could linger, ``PROJECTION_LINGER_SECONDS``, so a few events share one delivery;
that is off, see there).  They are GIL-bound Python either way; run side by side they only
took the GIL (and the write lock) from each other at every SQLite call, a storm of
context switches that made each of them, ``thread_views`` included, several times slower.
Under load the projections still overlap, one batch apart.

**One delivery in flight per worker.**  While a worker is busy with a ``Deliver``, entries
for it are queued and go out together, in one ``Deliver``, as soon as it reports.
Each ``Deliver`` is one write transaction in the worker, so under load the batch grows to
what arrived during the previous one (group commit at every hop: fewer commits, fsyncs and
write-lock hand-overs per entry), and when idle an entry still goes out at once.

The bookkeeping behind all this (what is in flight, which worker is busy, what waits for it,
retry or count, when to park, what to ack, when the reader must pause) is a
:class:`~metawsm.actors.forum.delivery.DeliveryTracker`, with no threads and no I/O; this
actor owns the reader thread and every Redis, SQLite and actor call, and does what the
tracker's answers ask, in the order they list it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, ClassVar

import msgspec

from metawsm.actors.bridge import CallbackReply
from metawsm.actors.errors import ActorUnavailable
from metawsm.actors.forum.bus import READ_BLOCK_MAX_MS, READ_BLOCK_MS, consumed_topics, open_bus
from metawsm.actors.forum.delivery import DeliveryTracker, Parking, Retry
from metawsm.actors.forum.messages import (
    CONSUMER,
    HANDLER,
    RELAY,
    Deliver,
    DeliveryDone,
    DeliveryReport,
    Flush,
    Poll,
    Reconcile,
    projection_path,
)
from metawsm.actors.forum.projection import ANNOUNCED
from metawsm.actors.managed import ManagedActor
from metawsm.actors.messages import Request
from metawsm.actors.scheduler import PacedTick
from metawsm.clock import now_text
from metawsm.forum import outbox
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.store import write_transaction
from metawsm.transport.streams import BusUnavailable, GroupMissing, InboundEntry, TransportError

log = logging.getLogger("metawsm.forum")


# -- the mailbox ----------------------------------------------------------------------------


class _Read(msgspec.Struct, frozen=True):
    """From the reader thread: entries it read (possibly none: the first read succeeded)."""

    reader: int
    entries: list[Any]


class _ReadFailed(msgspec.Struct, frozen=True):
    """From the reader thread: its read failed and it has stopped."""

    reader: int
    group_missing: bool
    error: str


class _Tick(msgspec.Struct, frozen=True):
    """Housekeeping: the periodic reclaim; ticks of a superseded ``token`` are ignored."""

    token: int = 0


class _AskReconcile(msgspec.Struct, frozen=True):
    """Try again to tell the relay the reconcile still owed (it was restarting)."""


class _Orphaned(msgspec.Struct, frozen=True):
    """From a previous incarnation's reader: entries its last blocking read returned after it
    was told to stop (pending under our consumer name; routing them twice is harmless)."""

    entries: list[Any]


class _LateReclaim(msgspec.Struct, frozen=True):
    """Claim once more, a moment after start, what the previous incarnation's reader took."""


class _AckNow(msgspec.Struct, frozen=True):
    """XACK what finished since the last ack (queued behind what is already waiting)."""


class _Release(msgspec.Struct, frozen=True):
    """A lingering worker's hold is over: deliver what waited for it, together."""

    target: str


class _Redeliver(msgspec.Struct, frozen=True):
    """A retry's time has come: deliver ``keys`` (those still in flight) to ``target``."""

    target: str
    keys: tuple[str, ...]


# The consumer's mailbox.  Tells, all of them: _Read and _ReadFailed (from the reader thread),
# _Orphaned (from a previous incarnation's reader), _Tick, _AskReconcile, _LateReclaim,
# _AckNow, _Redeliver, _Release and Poll (its own timers and continuations; Poll after a Redis backoff),
# DeliveryDone (a worker's answer to a Deliver, through its reply callbacks).  Requests: none;
# the consumer answers nothing but the runtime's Ping.
ConsumerMessage = (_Read | _ReadFailed | _Orphaned | _Tick | _AskReconcile | _LateReclaim | _AckNow | _Redeliver
                   | _Release | Poll | DeliveryDone)


READ_COUNT = 500
# Projections nobody waits for (thread_stats, queue_view) could get their events this long after
# the first of them, together, when idle (one Deliver and one transaction per five events at 100
# writes/s).  Off (0): a client that lists a queue or the stats right after its write was answered
# would miss that write for the whole linger, and scripts do exactly that.  Without it they follow
# thread_views within a few milliseconds; under load their batches grow anyway.
PROJECTION_LINGER_SECONDS = 0.0


def event_chain() -> list[str]:
    """The projections an event visits, in turn: the announced ones first (thread_views, then
    control_state), then the others, each group in :data:`PROJECTION_NAMES` order."""
    return ([name for name in PROJECTION_NAMES if name in ANNOUNCED]
            + [name for name in PROJECTION_NAMES if name not in ANNOUNCED])

# Finished entries are acknowledged this long after the first of them, together (the relay's
# "sent" marks wait as long): nobody waits for an ack, it only empties Redis's pending list.
ACK_DELAY_SECONDS = 0.05
# The periodic reclaim (entries pending for RECLAIM_MIN_IDLE_MS under a consumer that lost
# them) runs every RECLAIM_EVERY_SECONDS while entries flow, backing off (doubling) to
# RECLAIM_IDLE_MAX_SECONDS while nothing is read or in flight: at rest nothing is pending.
RECLAIM_EVERY_SECONDS = 10.0
RECLAIM_IDLE_MAX_SECONDS = 60.0
RECLAIM_MIN_IDLE_MS = 30_000
BACKOFF_INITIAL = 0.1
# Retrying Redis once a second costs nothing, and it bounds how long the pipeline stays
# stopped after Redis is back (it also wakes the relay out of its own, longer, backoff).
BACKOFF_MAX = 1.0
# How soon a reconcile the relay could not take (it was restarting) is asked for again.
RECONCILE_RETRY_SECONDS = 0.1
# The reader blocks READER_BLOCK_MS after a read that returned entries, and twice as long after
# each empty one, up to READ_BLOCK_MAX_MS: a busy stream is read at once either way (a block
# returns as soon as an entry arrives), an idle one costs a round trip every two seconds
# instead of ten a second.
READER_BLOCK_MS = READ_BLOCK_MS * 2
READER_BLOCK_MAX_MS = READ_BLOCK_MAX_MS
# The previous incarnation's reader is not waited for (its blocking read cannot be cut
# short: redis-py retries it once on a fresh connection).  Whatever it still reads it hands to
# the current incarnation (_Orphaned); should that fail (nobody bound yet), it is left pending
# under our consumer name, and these claims, after a short block and after the old reader has
# surely given up (its longest block), take it over.  Claiming our own pending entries is
# always safe: keys already in flight are skipped and workers dedupe.
LATE_RECLAIM_SECONDS = (3 * READER_BLOCK_MS / 1000, 1.5 * READER_BLOCK_MAX_MS / 1000)


class _Reader(threading.Thread):
    """Blocks in XREADGROUP for the consumer actor and tells it what came back."""

    def __init__(self, number: int, bus: Any, topics: list[str], actor_ref: Any, name: str,
                 handoff: Any = None) -> None:
        super().__init__(name=name, daemon=True)
        self.number = number
        self.bus = bus
        self.topics = topics
        self.actor_ref = actor_ref
        self.handoff = handoff  # called with what a read returned after stop()
        self.stopped = threading.Event()
        self.room = threading.Event()  # cleared while the actor has too much in flight
        self.room.set()

    def stop(self) -> None:
        self.stopped.set()
        self.room.set()

    def run(self) -> None:
        first = True
        block_ms = READER_BLOCK_MS
        while not self.stopped.is_set():
            if not self.room.wait(0.5):
                continue
            if self.stopped.is_set():
                return
            try:
                entries = self.bus.read(self.topics, count=READ_COUNT, block_ms=block_ms)
            except TransportError as error:
                if not self.stopped.is_set():
                    _safe_tell(self.actor_ref, _ReadFailed(self.number, isinstance(error, GroupMissing), str(error)))
                return
            except Exception as error:  # noqa: BLE001 - report anything; the actor decides
                if not self.stopped.is_set():
                    _safe_tell(self.actor_ref, _ReadFailed(self.number, False, f"{type(error).__name__}: {error}"))
                return
            if self.stopped.is_set():
                if entries and self.handoff is not None:
                    try:
                        self.handoff(entries)  # else left pending: the next incarnation's late reclaim takes them
                    except Exception:  # noqa: BLE001 - best effort; the late reclaim is the fallback
                        pass
                break
            block_ms = READER_BLOCK_MS if entries else min(block_ms * 2, READER_BLOCK_MAX_MS)
            if entries or first:
                first = False
                _safe_tell(self.actor_ref, _Read(self.number, entries))
        try:
            self.bus.close()  # the connection a retried read may have reopened
        except Exception:  # noqa: BLE001 - closing a connection that may be broken is best effort
            pass


class StreamConsumer(ManagedActor):
    kind: ClassVar[str] = "consumer"

    def setup(self) -> None:
        services = self.system.services
        self.services = services
        self.status = services.bus
        self.conn: sqlite3.Connection = services.db.connect()
        self.bus = open_bus(services, "consumer")
        self.topics = consumed_topics(services)
        self.tracker = DeliveryTracker(
            command_targets=[HANDLER],
            event_targets=[projection_path(name) for name in event_chain()],
            max_attempts=services.policy.forum.max_attempts,
            linger={projection_path(name): PROJECTION_LINGER_SECONDS
                    for name in PROJECTION_NAMES if name not in ANNOUNCED and PROJECTION_LINGER_SECONDS > 0},
        )
        self._groups_ready = False
        # Reconcile is owed until told to the relay: set on start and whenever Redis lost our
        # groups, so a failure half-way through recreating them cannot skip it.
        self._reconcile_reason = "consumer start"
        self._backoff = 0.0
        self._read_since_tick = 0  # entries read since the last reclaim tick
        self._reconcile_retry_queued = False
        self._reader: _Reader | None = None
        self._readers_started = 0
        self.acked_total = 0
        self.parked_total = 0
        self.status.consumer_running = True
        self._reclaimer = PacedTick(RECLAIM_EVERY_SECONDS, RECLAIM_IDLE_MAX_SECONDS,
                                    lambda delay, token: self.tell_self_later(delay, _Tick(token)))
        self._reclaimer.start()
        for delay in LATE_RECLAIM_SECONDS:
            self.tell_self_later(delay, _LateReclaim())
        self._start_reading()

    def teardown(self) -> None:
        self.status.consumer_running = False
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop()  # not joined: see LATE_RECLAIM_SECONDS
        tracker = getattr(self, "tracker", None)
        finished = tracker.take_acks() if tracker is not None else []
        if finished:  # the ack the timer would have sent (best effort: otherwise reclaimed, deduped)
            try:
                self._ack(finished)
            except Exception:  # a stopping consumer's ack is only bookkeeping
                log.debug("final ack failed, entries will be reclaimed", exc_info=True)
        self.bus.close()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "in_flight": len(self.tracker),
            "acked_total": self.acked_total,
            "parked_total": self.parked_total,
            "groups_ready": self._groups_ready,
        }

    def handle(self, message: Any) -> Any:
        match message:
            case _Read():
                self._read(message)
            case _ReadFailed():
                self._read_failed(message)
            case _Orphaned(entries=entries):
                if self._groups_ready:
                    self._route(entries)  # otherwise _start_reading claims everything pending
            case _Tick(token=token):
                if self._reclaimer.current(token):
                    self._tick()
            case _AskReconcile():
                self._reconcile_retry_queued = False
                if self._groups_ready:
                    self._ask_reconcile()
            case _LateReclaim():
                self._late_reclaim()
            case _AckNow():
                self._ack(self.tracker.take_acks())
            case Poll():
                self._poll()
            case DeliveryDone():
                self._delivery_done(message)
            case _Redeliver(target=target, keys=keys):
                self._send(target, self.tracker.in_flight(keys))
            case _Release(target=target):
                self._send(target, self.tracker.release(target), held=True)
            case _:
                return super().handle(message)
        return None

    # -- reading --------------------------------------------------------------------------

    def _start_reading(self) -> bool:
        """Make sure our group exists on every stream; take over what a dead consumer left."""
        try:
            created = self.bus.ensure_groups(self.topics)
            # Only one daemon serves a namespace, so whatever is pending belongs to a
            # consumer that is gone (often our own previous incarnation): claim it all now.
            reclaimed = self.bus.reclaim(self.topics, min_idle_ms=0, count=1000)
        except TransportError as error:
            self._unavailable(error)
            return False
        self._groups_ready = True
        self._bus_ok()
        self._route([entry for entry, _ in reclaimed])
        if created and not self._reconcile_reason:
            self._reconcile_reason = "redis lost its streams"
        self._ask_reconcile()
        self._start_reader()
        return True

    def _start_reader(self) -> None:
        if self._reader is not None:
            return
        self._readers_started += 1
        system = self.system
        self._reader = _Reader(self._readers_started, self.bus, self.topics, self.actor_ref,
                               f"{threading.current_thread().name}-reader",
                               handoff=lambda entries: system.tell(CONSUMER, _Orphaned(entries)))
        self._update_room()
        self._reader.start()

    def _update_room(self) -> None:
        if self._reader is None:
            return
        room = self.tracker.reader_room()
        if room is False:
            self._reader.room.clear()
        elif room:
            self._reader.room.set()

    def _ask_reconcile(self) -> None:
        if not self._reconcile_reason:
            return
        if self.system.tell(RELAY, Reconcile(reason=self._reconcile_reason)):
            self._reconcile_reason = ""
        elif not self._reconcile_retry_queued:  # the relay is restarting: ask again shortly
            self._reconcile_retry_queued = True
            self.tell_self_later(RECONCILE_RETRY_SECONDS, _AskReconcile())

    def _poll(self) -> None:
        """After a backoff: try again to (re)start reading."""
        if not self._groups_ready:
            self._start_reading()
        else:
            self._start_reader()

    def _read(self, message: _Read) -> None:
        if self._reader is None or message.reader != self._reader.number:
            return  # from a reader we already replaced; its entries are reclaimed
        self._bus_ok()
        if message.entries:
            self._read_since_tick += len(message.entries)
            self._route(message.entries)
        self._update_room()

    def _read_failed(self, message: _ReadFailed) -> None:
        if self._reader is None or message.reader != self._reader.number:
            return
        self._reader = None  # it has stopped
        if message.group_missing:
            log.warning("redis lost the consumer group (%s); recreating it and reconciling", message.error)
            self.bus.forget_groups()
            self._groups_ready = False
            self._reconcile_reason = "redis lost its streams"
            self._start_reading()
            return
        self._unavailable(TransportError(message.error))

    def _late_reclaim(self) -> None:
        if not self._groups_ready:
            return  # _start_reading claims everything pending once Redis answers
        try:
            reclaimed = self.bus.reclaim(self.topics, min_idle_ms=0, count=1000)
        except TransportError as error:
            log.debug("late reclaim failed: %s", error)
            return
        if reclaimed:
            self._route([entry for entry, _ in reclaimed])

    def _tick(self) -> None:
        """The periodic reclaim; the next one comes sooner while entries flow or wait."""
        reclaimed: list[Any] = []
        if self._groups_ready and self._reader is not None:
            try:
                reclaimed = self.bus.reclaim(self.topics, RECLAIM_MIN_IDLE_MS)
            except TransportError as error:
                log.debug("periodic reclaim failed: %s", error)
            if reclaimed:
                self._route([entry for entry, _ in reclaimed])
        read, self._read_since_tick = self._read_since_tick, 0
        self._reclaimer.done(active=bool(read or reclaimed or len(self.tracker) or self._backoff))

    def _bus_ok(self) -> None:
        if self._backoff:
            log.info("redis reachable again; stream consumer resumed")
            # The relay may be deep in its own backoff (up to 10 s): wake it now.
            self.system.tell(RELAY, Flush(force=True))
        self._backoff = 0.0
        self.status.mark_healthy()

    def _unavailable(self, error: Exception) -> None:
        first = not self._backoff
        self._backoff = BACKOFF_INITIAL if first else min(self._backoff * 2, BACKOFF_MAX)
        self.status.mark_unhealthy(str(error))
        self.status.consecutive_errors += 1
        self.status.last_error = str(error)
        if first:
            log.warning("redis unavailable, stream consumer waiting: %s", error)
        if isinstance(error, BusUnavailable):
            self._groups_ready = self._groups_ready  # keep; NOGROUP will tell us if they vanished
        me = self.actor_ref
        self.system.scheduler.call_later(self._backoff, lambda: _safe_tell(me, Poll()))

    # -- delivery: the tracker decides, the actor does ------------------------------------

    def _route(self, entries: list[InboundEntry]) -> None:
        admitted = self.tracker.admit(entries)
        for parking in admitted.parkings:
            self._park(parking)
        for target, keys in admitted.sends.items():
            self._send(target, keys)

    def _send(self, target: str, keys: list[str], *, held: bool = False) -> None:
        now = time.monotonic()
        if not held:
            delay = self.tracker.hold(target, keys, now)
            if delay is not None:
                if delay > 0:
                    self.tell_self_later(delay, _Release(target))
                return
        batch = self.tracker.batch(target, keys, now)
        if batch is None:
            return
        me = self.actor_ref
        key_tuple = batch.keys

        def done(report: DeliveryReport) -> None:
            _safe_tell(me, DeliveryDone(target=target, keys=key_tuple, failed=report.failed,
                                        retry_after=report.retry_after))

        def failed(error: BaseException) -> None:
            text = f"{type(error).__name__}: {error}"
            _safe_tell(
                me,
                DeliveryDone(
                    target=target,
                    keys=key_tuple,
                    failed={k: text for k in key_tuple},
                    retry_only=isinstance(error, ActorUnavailable),
                ),
            )

        ref = self.system.directory.get(target)
        try:
            if ref is None:
                raise ActorUnavailable(target)
            ref.tell(Request(body=Deliver(entries=batch.entries), reply=CallbackReply(done, failed)))
        except Exception:  # noqa: BLE001 - dead or restarting worker: try again shortly
            self._schedule(self.tracker.undeliverable(batch))

    def _schedule(self, retry: Retry) -> None:
        me = self.actor_ref
        message = _Redeliver(retry.target, retry.keys)
        self.system.scheduler.call_later(retry.delay, lambda: _safe_tell(me, message))

    def _delivery_done(self, report: DeliveryDone) -> None:
        reported = self.tracker.report(report)
        for parking in reported.parkings:
            self._park(parking)
        for target, keys in reported.onward:
            self._send(target, keys)
        for retry in reported.retries:
            self._schedule(retry)
        self._send(report.target, reported.queued)
        if reported.ack_soon:
            # Acked ACK_DELAY_SECONDS later, in one XACK for everything finished meanwhile: the
            # ack is a Redis round trip nobody waits for, and at 100 writes/s one per entry was
            # two round trips per write.  An entry not acked yet when the actor stops is
            # reclaimed and deduplicated by the workers, as any unacked entry is.
            self.tell_self_later(ACK_DELAY_SECONDS, _AckNow())
        self._update_room()

    def _ack(self, entries: list[InboundEntry]) -> None:
        try:
            self.bus.ack(entries)
        except TransportError as error:
            # Still pending in Redis: reclaimed later and deduplicated by the workers.
            log.debug("ack failed, entries will be reclaimed: %s", error)
            return
        self.acked_total += len(entries)
        self.status.total_processed += len(entries)
        self.status.last_processed_at = now_text()
        self.status.consecutive_errors = 0

    def _park(self, parking: Parking) -> None:
        entry = parking.entry
        message_id = entry.message_id or f"fmsg_unknown_{entry.entry_id}"
        try:
            with write_transaction(self.conn):
                outbox.park(
                    self.conn,
                    message_id=message_id,
                    topic=entry.topic,
                    stream=entry.stream,
                    stream_entry_id=entry.entry_id,
                    payload=entry.payload,
                    attempts=parking.attempts,
                    error=parking.error,
                    now=now_text(),
                )
        except sqlite3.Error as error:
            fault = self.services.storage.report(error)
            if fault is None:
                raise
            # Not recorded, so not acked either: the entry stays pending in Redis and a reclaim
            # brings it back once the disk can be written.  Crashing would only loop.
            log.warning("could not park stream entry %s (%s): %s", message_id, fault.reason, error)
            return
        self.parked_total += 1
        self.status.parked_total += 1
        log.error("parked stream entry %s (%s) after %d attempt(s): %s",
                  message_id, entry.topic, parking.attempts, parking.error)
        if parking.ack:
            self._ack([entry])


def _safe_tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the consumer restarted; its successor re-reads Redis
        pass
