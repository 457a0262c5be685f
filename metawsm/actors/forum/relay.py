"""OutboxRelay: publishes pending ``forum_outbox`` rows to Redis Streams, oldest first.

Woken by ``WorkAvailable`` (push); a one-second sweep catches rows written while it was
down.  Publishing does not wait for the "sent" marks: the relay remembers the highest
outbox id it published (outbox ids grow in commit order: writers are serialised and rows
are never deleted) and reads on from there, while the marks of everything published so far
are written by one ``_MarkSent`` a moment later (``MARK_DELAY_SECONDS``).  So a publish never
queues for the database write lock, the mark stays out of the way of the write just
published, and one mark transaction covers everything published in the meantime.  A
crash between publish and mark only means a republish, which every consumer dedupes.  On
Redis errors the rows stay pending and the relay retries with exponential backoff (100 ms →
10 s), reporting the bus unhealthy meanwhile.  It also runs the reconcile pass, which
republishes what an emptied Redis may have lost.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from typing import Any, ClassVar

import msgspec

from metawsm.actors.forum.bus import consumed_topics, open_bus
from metawsm.actors.forum.messages import Flush, Reconcile, ReplayParked, WorkAvailable
from metawsm.actors.managed import ManagedActor
from metawsm.actors.messages import FailureInfo
from metawsm.clock import now_text
from metawsm.forum import outbox
from metawsm.forum.errors import ForumError
from metawsm.forum.messages import encode
from metawsm.forum.write_model import EVENT_COLUMNS, event_from_row
from metawsm.store import write_transaction
from metawsm.transport.namespace import NamespaceTaken
from metawsm.transport.streams import BusUnavailable, OutboundEntry, TransportError

log = logging.getLogger("metawsm.forum")

BATCH = 500
SWEEP_SECONDS = 1.0
TRIM_EVERY_SECONDS = 30.0
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
# The "sent" marks wait this long, so they are written once for everything published
# meanwhile, and never while the pipeline is busy with the write just published.
MARK_DELAY_SECONDS = 0.05


class _Sweep(msgspec.Struct, frozen=True):
    """Safety sweep: publish rows a missed wake-up left behind."""


class _MarkSent(msgspec.Struct, frozen=True):
    """Write the "sent" marks of the rows published since the last mark."""


# Tells: WorkAvailable (from the intake and the handler), Flush (its own; force=True from the
# consumer when Redis answers again), Reconcile (from the consumer; as a request it answers
# the counts {commands_requeued, events_republished}), _MarkSent and _Sweep (its own).
# Request: ReplayParked (from the API) -> {message_id, topic, status} (ForumError not_found
# or unavailable).
RelayMessage = WorkAvailable | Flush | Reconcile | ReplayParked | _MarkSent | _Sweep


class OutboxRelay(ManagedActor):
    kind: ClassVar[str] = "relay"

    def setup(self) -> None:
        services = self.system.services
        self.services = services
        self.conn: sqlite3.Connection = services.db.connect()
        # Derived bookkeeping, so no fsync per commit: a 'sent' mark lost to a power cut only means
        # a republish, which every consumer dedupes.  WAL keeps commits in order, so the next FULL
        # commit (intake, handler) makes this one durable too.  One fsync less per write.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.bus = open_bus(services, "relay")
        self.topics = consumed_topics(services)
        self._flush_queued = False
        self._cursor = 0  # highest outbox id published by this incarnation (rows above it are new)
        self._unmarked: list[int] = []  # published, "sent" mark not written yet
        self._mark_queued = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_trim = time.monotonic()
        self._last_claim = time.monotonic()
        self.published_total = 0
        self.last_published_at: str | None = None
        self.tell_self_every(SWEEP_SECONDS, _Sweep())
        self.tell_self(Flush())

    def teardown(self) -> None:
        try:
            self._mark_sent()  # best effort: an unwritten mark only means a republish
        except Exception:
            log.debug("relay could not write its last sent marks", exc_info=True)
        self.bus.close()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "published_total": self.published_total,
            "last_published_at": self.last_published_at,
            "backoff_ms": round(self._backoff * 1000),
        }

    def handle(self, message: Any) -> Any:
        match message:
            case WorkAvailable():
                self._queue_flush()
            case Flush(force=force):
                if force:
                    self._retry_at = 0.0  # Redis answers again: no need to sit out the backoff
                else:
                    self._flush_queued = False
                self._flush()
            case _MarkSent():
                self._mark_queued = False
                self._mark_sent()
            case _Sweep():
                self._rescan()
                self._flush()
                self._maybe_trim()
                self._refresh_claim()
            case Reconcile(reason=reason):
                return self._reconcile(reason)
            case ReplayParked(message_id=message_id):
                return self._replay(message_id)
            case _:
                return super().handle(message)
        return None

    # -- publishing -----------------------------------------------------------------------

    def _queue_flush(self) -> None:
        if not self._flush_queued:
            self._flush_queued = True
            self.tell_self(Flush())

    def _flush(self) -> None:
        if time.monotonic() < self._retry_at or self._namespace_lost():
            return
        while True:
            rows = outbox.pending(self.conn, BATCH, self._cursor)
            if not rows:
                return
            entries = [OutboundEntry(r.message_id, r.topic, r.message_key, r.payload) for r in rows]
            try:
                self.bus.publish(entries)
            except TransportError as error:
                self._publish_failed(error, [r.id for r in rows])
                return
            self._unmarked.extend(r.id for r in rows)
            self._cursor = rows[-1].id
            if not self._mark_queued:
                self._mark_queued = True
                me = self.actor_ref
                self.system.scheduler.call_later(MARK_DELAY_SECONDS, functools.partial(_safe_tell, me, _MarkSent()))
            self._published(len(rows))
            if len(rows) < BATCH:
                return

    def _mark_sent(self) -> None:
        if self._unmarked:
            ids, self._unmarked = self._unmarked, []
            with write_transaction(self.conn):
                outbox.mark_sent(self.conn, ids, now_text())

    def _rescan(self) -> None:
        """Write pending marks, then read the outbox from the start again (rows that went back
        to pending, or were written by another process, below the cursor)."""
        self._mark_sent()
        self._cursor = 0

    def _published(self, count: int) -> None:
        if self._backoff:
            log.info("redis reachable again; outbox relay resumed publishing")
        self._backoff = 0.0
        self._retry_at = 0.0
        self.published_total += count
        self.last_published_at = now_text()
        self.services.bus.mark_healthy()

    def _publish_failed(self, error: Exception, row_ids: list[int]) -> None:
        first = not self._backoff
        self._backoff = BACKOFF_INITIAL if first else min(self._backoff * 2, BACKOFF_MAX)
        self._retry_at = time.monotonic() + self._backoff
        self.services.bus.mark_unhealthy(str(error))
        if first:
            log.warning("redis unavailable, outbox rows stay pending: %s", error)
        with write_transaction(self.conn):
            outbox.record_failure(self.conn, row_ids[:1], str(error), now_text())
        me = self.actor_ref
        self.system.scheduler.call_later(self._backoff, lambda: _safe_tell(me, Flush()))

    def _maybe_trim(self) -> None:
        if time.monotonic() - self._last_trim < TRIM_EVERY_SECONDS or not self.services.bus.healthy:
            return
        self._last_trim = time.monotonic()
        try:
            self.bus.trim_acknowledged(self.topics)
        except TransportError as error:
            log.debug("stream trim skipped: %s", error)

    def _refresh_claim(self) -> None:
        claim = self.services.namespace_claim
        if claim is None or claim.lost is not None or time.monotonic() - self._last_claim < claim.refresh_interval:
            return
        self._last_claim = time.monotonic()
        try:
            claim.refresh()
        except NamespaceTaken as error:
            # The streams are another database's now: publishing or consuming would mix the
            # two.  No restart can cure that, so the system fails once, visibly (health
            # "failed" with this reason, serve exits), instead of crash-looping the pipeline.
            self.system.fail(FailureInfo(type="NamespaceLost", message=f"namespace claim lost: {error}",
                                         at=now_text()))
        except TransportError as error:
            log.debug("namespace claim refresh failed: %s", error)

    def _namespace_lost(self) -> bool:
        claim = self.services.namespace_claim
        return claim is not None and claim.lost is not None

    # -- reconcile and replay -------------------------------------------------------------

    def _reconcile(self, reason: str) -> dict[str, int]:
        """Republish commands without a verdict and events some projection has not applied."""
        self._rescan()  # marks first, so none lands on a row this pass sends back to pending
        now = now_text()
        topics = self.services.topics
        with write_transaction(self.conn):
            commands = outbox.requeue_unfinished_commands(self.conn, topics.command_prefix, now)
        floor = self.conn.execute(
            "SELECT COALESCE(MIN(last_sequence), 0) FROM forum_projection_checkpoints"
        ).fetchone()[0]
        projections = self.conn.execute("SELECT COUNT(*) FROM forum_projection_checkpoints").fetchone()[0]
        if projections < 4:
            floor = 0
        events = 0
        last = floor
        while True:
            rows = self.conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (last, BATCH),
            ).fetchall()
            if not rows:
                break
            batch = [event_from_row(row) for row in rows]
            entries = [
                OutboundEntry(f"fmsg_replay_{e.envelope.event_id}", topics.event(e.envelope.event_type),
                              e.envelope.thread_id, encode(e))
                for e in batch
            ]
            try:
                self.bus.publish(entries)
            except BusUnavailable as error:
                log.warning("reconcile could not republish events: %s", error)
                break
            events += len(entries)
            last = batch[-1].sequence
        if commands or events:
            log.info("reconcile (%s): requeued %d command(s), republished %d event(s)", reason, commands, events)
        self._queue_flush()
        return {"commands_requeued": commands, "events_republished": events}

    def _replay(self, message_id: str) -> dict[str, str]:
        # Publish inside the transaction that marks it replayed: a refused publish rolls the
        # mark back (the message stays parked, nothing is lost), and the consumer cannot
        # park the replayed entry again before the mark is committed.
        with write_transaction(self.conn):
            found = outbox.unpark(self.conn, message_id, now_text())
            if found is None:
                raise ForumError(f"parked message {message_id} not found", code="not_found", status=404)
            topic, payload = found
            try:
                self.bus.publish([OutboundEntry(message_id, topic, message_id, payload)])
            except TransportError as error:
                raise ForumError(
                    f"parked message {message_id} was not replayed: {error}", code="unavailable", status=503
                ) from None
        log.info("replayed parked message %s on %s", message_id, topic)
        return {"message_id": message_id, "topic": topic, "status": "replayed"}

def _safe_tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the relay restarted; its sweep takes over
        pass
