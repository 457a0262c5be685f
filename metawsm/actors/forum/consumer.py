"""StreamConsumer: reads every topic stream with one consumer group and routes entries.

Commands go to the CommandHandler, events to every projection.  An entry is acknowledged
only after every actor it was routed to confirmed its commit.  A worker that fails an entry
gets it again after a backoff; after ``forum.max_attempts`` counted failures the entry is
parked (recorded with its error, acknowledged, replayable).  A worker that was merely
unavailable (restarting) gets the entry again without the failure being counted.

The actor polls by telling itself ``Poll`` after each read: reads block for at most
``READ_BLOCK_MS``, so control messages (delivery reports, stop, fault injection)
interleave with reads.

**One delivery in flight per worker.**  While a worker is busy with a ``Deliver``, entries
for it are queued here and go out together, in one ``Deliver``, as soon as it reports.
Each ``Deliver`` is one write transaction in the worker, so under load the batch grows to
what arrived during the previous one (group commit at every hop: fewer commits, fsyncs and
write-lock hand-overs per entry), and when idle an entry still goes out at once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, ClassVar

import msgspec

from metawsm.actors.bridge import CallbackReply
from metawsm.actors.errors import ActorUnavailable
from metawsm.actors.forum.bus import READ_BLOCK_MS, consumed_topics, open_bus
from metawsm.actors.forum.messages import (
    HANDLER,
    RELAY,
    Deliver,
    DeliveryDone,
    DeliveryReport,
    Entry,
    Flush,
    Poll,
    Reconcile,
    projection_path,
)
from metawsm.actors.managed import ManagedActor
from metawsm.actors.messages import Request
from metawsm.clock import now_text
from metawsm.forum import outbox
from metawsm.forum.messages import CommandMessage, EventMessage, decode_bus_message
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.store import write_transaction
from metawsm.transport.streams import BusUnavailable, GroupMissing, InboundEntry, TransportError

log = logging.getLogger("metawsm.forum")

READ_COUNT = 500
MAX_IN_FLIGHT = 5000
RECLAIM_EVERY_SECONDS = 10.0
RECLAIM_MIN_IDLE_MS = 30_000
RETRY_UNAVAILABLE_SECONDS = 0.02
RETRY_FAILED_SECONDS = 0.05
MAX_DELIVER = 1000  # entries per Deliver (one worker transaction)
BUSY_STALE_SECONDS = 10.0  # a worker that has not reported for this long gets the next batch anyway
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0


class _Redeliver(msgspec.Struct, frozen=True):
    target: str
    keys: tuple[str, ...]


class _InFlight:
    __slots__ = ("entry", "message", "remaining", "attempts", "errors", "parked")

    def __init__(self, entry: InboundEntry, message: Any, targets: list[str]) -> None:
        self.entry = entry
        self.message = message
        self.remaining = set(targets)
        self.attempts: dict[str, int] = {}
        self.errors: dict[str, str] = {}
        self.parked = False  # recorded once, however many targets gave up on it


class StreamConsumer(ManagedActor):
    kind: ClassVar[str] = "consumer"

    def setup(self) -> None:
        services = self.system.services
        self.services = services
        self.status = services.bus
        self.max_attempts = services.policy.forum.max_attempts
        self.conn: sqlite3.Connection = services.db.connect()
        self.bus = open_bus(services, "consumer")
        self.topics = consumed_topics(services)
        self.event_targets = [projection_path(name) for name in PROJECTION_NAMES]
        self.in_flight: dict[str, _InFlight] = {}
        self._busy: dict[str, float] = {}  # worker -> when its outstanding Deliver was sent
        self._queued: dict[str, dict[str, None]] = {}  # worker -> keys waiting for it (ordered set)
        self._groups_ready = False
        # Reconcile is owed until told to the relay: set on start and whenever Redis lost our
        # groups, so a failure half-way through recreating them cannot skip it.
        self._reconcile_reason = "consumer start"
        self._backoff = 0.0
        self._waiting_for_room = False
        self._last_reclaim = 0.0
        self.acked_total = 0
        self.parked_total = 0
        self.status.consumer_running = True
        self._start_reading()

    def teardown(self) -> None:
        self.status.consumer_running = False
        self.bus.close()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "in_flight": len(self.in_flight),
            "acked_total": self.acked_total,
            "parked_total": self.parked_total,
            "groups_ready": self._groups_ready,
        }

    def handle(self, message: Any) -> Any:
        if isinstance(message, Poll):
            self._poll()
        elif isinstance(message, DeliveryDone):
            self._delivery_done(message)
        elif isinstance(message, _Redeliver):
            self._send(message.target, [k for k in message.keys if k in self.in_flight])
        else:
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
        self.tell_self(Poll())
        return True

    def _ask_reconcile(self) -> None:
        if self._reconcile_reason and self.system.tell(RELAY, Reconcile(reason=self._reconcile_reason)):
            self._reconcile_reason = ""

    def _poll(self) -> None:
        if not self._groups_ready:
            self._start_reading()
            return
        if self._reconcile_reason:
            self._ask_reconcile()  # the relay was restarting when we first asked
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            self._waiting_for_room = True
            return
        try:
            entries = self.bus.read(self.topics, count=READ_COUNT, block_ms=READ_BLOCK_MS)
            now = time.monotonic()
            if now - self._last_reclaim > RECLAIM_EVERY_SECONDS:
                self._last_reclaim = now
                entries += [e for e, _ in self.bus.reclaim(self.topics, RECLAIM_MIN_IDLE_MS)]
        except GroupMissing as error:
            log.warning("redis lost the consumer group (%s); recreating it and reconciling", error)
            self.bus.forget_groups()
            self._groups_ready = False
            self._reconcile_reason = "redis lost its streams"
            self._start_reading()
            return
        except TransportError as error:
            self._unavailable(error)
            return
        self._bus_ok()
        if entries:
            self._route(entries)
        self.tell_self(Poll())

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

    # -- routing and delivery -------------------------------------------------------------

    def _route(self, entries: list[InboundEntry]) -> None:
        batches: dict[str, list[str]] = {}
        for entry in entries:
            key = f"{entry.stream}/{entry.entry_id}"
            if key in self.in_flight:
                continue
            try:
                message = decode_bus_message(entry.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                record = _InFlight(entry, None, [])
                self._park(record, f"undecodable entry: {error}", attempts=1)
                continue
            if isinstance(message, CommandMessage):
                targets = [HANDLER]
            elif isinstance(message, EventMessage):
                targets = self.event_targets
            else:  # pragma: no cover - the union has two members
                continue
            self.in_flight[key] = _InFlight(entry, message, targets)
            for target in targets:
                batches.setdefault(target, []).append(key)
        for target, keys in batches.items():
            self._send(target, keys)

    def _send(self, target: str, keys: list[str]) -> None:
        if not keys:
            return
        now = time.monotonic()
        sent_at = self._busy.get(target)
        if sent_at is not None and now - sent_at < BUSY_STALE_SECONDS:
            self._queued.setdefault(target, {}).update(dict.fromkeys(keys))
            return
        if len(keys) > MAX_DELIVER:
            self._queued.setdefault(target, {}).update(dict.fromkeys(keys[MAX_DELIVER:]))
            keys = keys[:MAX_DELIVER]
        self._busy[target] = now
        entries = [
            Entry(key=k, message=self.in_flight[k].message, message_id=self.in_flight[k].entry.message_id)
            for k in keys
        ]
        me = self.actor_ref
        key_tuple = tuple(keys)

        def done(report: DeliveryReport) -> None:
            _safe_tell(me, DeliveryDone(target=target, keys=key_tuple, failed=report.failed))

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
            ref.tell(Request(body=Deliver(entries=entries), reply=CallbackReply(done, failed)))
        except Exception:  # noqa: BLE001 - dead or restarting worker: try again shortly
            self._busy.pop(target, None)
            self._schedule(RETRY_UNAVAILABLE_SECONDS, target, key_tuple)

    def _send_queued(self, target: str) -> None:
        queued = self._queued.pop(target, None)
        if queued:
            keys = [k for k in queued if k in self.in_flight and target in self.in_flight[k].remaining]
            self._send(target, keys)

    def _schedule(self, delay: float, target: str, keys: tuple[str, ...]) -> None:
        me = self.actor_ref
        self.system.scheduler.call_later(delay, lambda: _safe_tell(me, _Redeliver(target, keys)))

    def _delivery_done(self, report: DeliveryDone) -> None:
        self._busy.pop(report.target, None)
        finished: list[_InFlight] = []
        retry_now: list[str] = []
        retry_later: dict[float, list[str]] = {}
        for key in report.keys:
            record = self.in_flight.get(key)
            if record is None or report.target not in record.remaining:
                continue
            error = report.failed.get(key)
            if error is None:
                record.remaining.discard(report.target)
            elif report.retry_only or error.startswith("retry:"):
                retry_now.append(key)
                continue
            else:
                attempts = record.attempts.get(report.target, 0) + 1
                record.attempts[report.target] = attempts
                record.errors[report.target] = error
                if attempts >= self.max_attempts:
                    if not record.parked:
                        self._park(record, f"{report.target}: {error}", attempts)
                    record.remaining.discard(report.target)
                else:
                    delay = RETRY_FAILED_SECONDS * (2 ** (attempts - 1))
                    retry_later.setdefault(delay, []).append(key)
                    continue
            if not record.remaining:
                finished.append(record)
                del self.in_flight[key]
        if retry_now:
            self._schedule(RETRY_UNAVAILABLE_SECONDS, report.target, tuple(retry_now))
        for delay, keys in retry_later.items():
            self._schedule(delay, report.target, tuple(keys))
        self._send_queued(report.target)
        if finished:
            self._ack([r.entry for r in finished])
        if self._waiting_for_room and len(self.in_flight) < MAX_IN_FLIGHT // 2:
            self._waiting_for_room = False
            self.tell_self(Poll())

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

    def _park(self, record: _InFlight, error: str, attempts: int) -> None:
        record.parked = True
        entry = record.entry
        message_id = entry.message_id or f"fmsg_unknown_{entry.entry_id}"
        with write_transaction(self.conn):
            outbox.park(
                self.conn,
                message_id=message_id,
                topic=entry.topic,
                stream=entry.stream,
                stream_entry_id=entry.entry_id,
                payload=entry.payload,
                attempts=attempts,
                error=error,
                now=now_text(),
            )
        self.parked_total += 1
        self.status.parked_total += 1
        log.error("parked stream entry %s (%s) after %d attempt(s): %s", message_id, entry.topic, attempts, error)
        if record.message is None:
            self._ack([entry])


def _safe_tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the consumer restarted; its successor re-reads Redis
        pass
