"""OutboxRelay: publishes pending ``forum_outbox`` rows to Redis Streams, oldest first.

Woken by ``WorkAvailable`` (push); a one-second sweep catches rows written while it was
down.  Publishing does not wait for the "sent" marks: the relay remembers the highest
outbox id it published (outbox ids grow in commit order: writers are serialised, and
retention never deletes the newest row, so no id is handed out twice) and reads on from
there, while the marks of everything published so far are written by one ``_MarkSent`` a
moment later (``MARK_DELAY_SECONDS``).  So a publish never queues for the database write
lock, the mark stays out of the way of the write just published, and one mark transaction
covers everything published in the meantime.  A crash between publish and mark only means a
republish, which every consumer dedupes.  On Redis errors the rows stay pending and the relay
retries with exponential backoff (100 ms → 10 s), reporting the bus unhealthy meanwhile.  It
also runs the reconcile pass, which republishes what an emptied Redis may have lost.

**A database that cannot be written** (a full disk; :mod:`metawsm.store.faults`): the ids
published but not marked sent stay in ``_unmarked`` and are skipped by every later read of the
pending rows, so nothing is published twice while this incarnation lives, and the relay does
not crash (a restart would republish them all, again and again).  Its sweep probes the
database once a second (a small write in ``forum_marks``); the first probe that succeeds clears
the fault, writes the missing marks, runs a reconcile it owes, and the whole pipeline resumes.

**Retention** (``forum.retention``): every ``sweep_seconds`` the relay deletes outbox rows that
are done (:mod:`metawsm.forum.retention`), then the projection ledger rows of events older than
``ledger_days`` that every projection has applied (:mod:`metawsm.forum.ledger_retention`), a
window at a time, each window a message of its own so publishing goes on between them.  The
stream trim (every 30 s, or ``sweep_seconds`` if shorter) cuts what every group acknowledged,
and the streams nobody here consumes at ``stream_days``.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from datetime import timedelta
from typing import Any, ClassVar

import msgspec

from metawsm.actors import storage
from metawsm.actors.forum.bus import consumed_topics, open_bus
from metawsm.actors.forum.messages import Flush, Reconcile, ReplayParked, WorkAvailable
from metawsm.actors.managed import ManagedActor
from metawsm.actors.messages import FailureInfo
from metawsm.actors.scheduler import PacedTick
from metawsm.clock import format_time, now_text, utc_now
from metawsm.forum import ledger_retention, marks, outbox, retention
from metawsm.forum.errors import ForumError
from metawsm.forum.messages import encode
from metawsm.forum.write_model import EVENT_COLUMNS, event_from_row
from metawsm.store import write_transaction
from metawsm.transport.namespace import NamespaceTaken
from metawsm.transport.streams import BusUnavailable, OutboundEntry, TransportError

log = logging.getLogger("metawsm.forum")

BATCH = 500
SWEEP_SECONDS = 1.0
# The safety sweep backs off (doubling) while it finds nothing to publish, no mark to write and
# no fault to probe, up to this; the namespace claim's refresh interval caps it too.
SWEEP_IDLE_MAX_SECONDS = 5.0
TRIM_EVERY_SECONDS = 30.0
BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 10.0
# The "sent" marks wait this long, so they are written once for everything published
# meanwhile, and never while the pipeline is busy with the write just published.
MARK_DELAY_SECONDS = 0.05
# The least pause between two windows of a retention sweep (see _prune).
PRUNE_PAUSE_SECONDS = 0.02


class _Sweep(msgspec.Struct, frozen=True):
    """Safety sweep: publish rows a missed wake-up left behind; ``token``: ticks of a superseded
    timer are ignored."""

    token: int = 0


class _MarkSent(msgspec.Struct, frozen=True):
    """Write the "sent" marks of the rows published since the last mark."""


class _Prune(msgspec.Struct, frozen=True):
    """Retention: delete the next window of done outbox rows, or once they are all gone (``ledger``)
    of old ledger rows (``resume``: go on with the sweep under way)."""

    resume: bool = False
    ledger: bool = False


# Tells: WorkAvailable (from the intake and the handler), Flush (its own; force=True from the
# consumer when Redis answers again), Reconcile (from the consumer; as a request it answers
# the counts {commands_requeued, events_republished}), _MarkSent, _Sweep and _Prune (its own).
# Request: ReplayParked (from the API) -> {message_id, topic, status} (ForumError not_found
# or unavailable).
RelayMessage = WorkAvailable | Flush | Reconcile | ReplayParked | _MarkSent | _Sweep | _Prune


class OutboxRelay(ManagedActor):
    kind: ClassVar[str] = "relay"

    def setup(self) -> None:
        services = self.system.services
        self.services = services
        self.storage = services.storage
        self.retention = services.policy.forum.retention
        self.conn: sqlite3.Connection = services.db.connect()
        # Derived bookkeeping, so no fsync per commit: a 'sent' mark lost to a power cut only means
        # a republish, which every consumer dedupes.  WAL keeps commits in order, so the next FULL
        # commit (intake, handler) makes this one durable too.  One fsync less per write.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.bus = open_bus(services, "relay")
        self.topics = consumed_topics(services)
        self._flush_queued = False
        self._cursor = 0  # highest outbox id published by this incarnation (rows above it are new)
        # Published, "sent" mark not written yet: never published again while this incarnation
        # lives, even when the mark cannot be written (a full disk) and the rows stay pending.
        self._unmarked: set[int] = set()
        self._mark_queued = False
        self._owed_reconcile = ""  # a reconcile the database could not take: run when it can
        self._pruning = False  # a retention sweep is under way (its windows follow one another)
        self._prune_after = 0  # the retention sweep's position (outbox id) within a sweep
        self._backoff = 0.0
        self._retry_at = 0.0
        self._last_trim = time.monotonic()
        self._last_claim = time.monotonic()
        self.published_total = 0
        self.last_published_at: str | None = None
        self.pruned_total = 0
        self.ledger_rows_deleted = 0
        self.ledger_floor = ledger_retention.floor(self.conn)  # as of this relay's last window
        self.retention_sweeps = 0  # sweeps completed (every done outbox row and old ledger row looked at)
        self.stream_entries_trimmed = 0
        claim = services.namespace_claim
        # Half the claim's refresh interval: a refresh is never skipped for being a moment early.
        ceiling = SWEEP_IDLE_MAX_SECONDS if claim is None else min(SWEEP_IDLE_MAX_SECONDS, claim.refresh_interval / 2)
        self._swept_published = 0  # published_total at the last sweep
        self._sweeper = PacedTick(SWEEP_SECONDS, max(SWEEP_SECONDS, ceiling),
                                  lambda delay, token: self.tell_self_later(delay, _Sweep(token)))
        self._sweeper.start()
        self.tell_self_every(float(self.retention.sweep_seconds), _Prune())
        self.tell_self(Flush())

    def teardown(self) -> None:
        try:
            self._mark_sent()  # best effort: an unwritten mark only means a republish
        except Exception:
            log.debug("relay could not write its last sent marks", exc_info=True)
        self.bus.close()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        fault = self.storage.fault
        return {
            "published_total": self.published_total,
            "last_published_at": self.last_published_at,
            "backoff_ms": round(self._backoff * 1000),
            "unmarked": len(self._unmarked),
            "pruned_total": self.pruned_total,
            "ledger_rows_deleted": self.ledger_rows_deleted,
            "ledger_floor": self.ledger_floor,
            "retention_sweeps": self.retention_sweeps,
            "stream_entries_trimmed": self.stream_entries_trimmed,
            "storage_fault": fault.reason if fault is not None else None,
        }

    def handle(self, message: Any) -> Any:
        match message:
            case WorkAvailable():
                self._queue_flush()
                if self.storage.fault is not None:
                    self._sweeper.poke()  # a writer met the fault: probe at the fast pace now
            case Flush(force=force):
                if force:
                    self._retry_at = 0.0  # Redis answers again: no need to sit out the backoff
                else:
                    self._flush_queued = False
                self._flush()
            case _MarkSent():
                self._mark_queued = False
                self._mark_sent()
            case _Sweep(token=token):
                if not self._sweeper.current(token):
                    return None
                self._probe_storage()
                self._rescan()
                self._flush()
                self._maybe_trim()
                self._refresh_claim()
                self._sweeper.done(active=self._sweep_was_busy())
            case _Prune(resume=resume, ledger=ledger):
                self._prune(resume, ledger)
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
            fresh = [r for r in rows if r.id not in self._unmarked] if self._unmarked else rows
            if fresh:
                entries = [OutboundEntry(r.message_id, r.topic, r.message_key, r.payload) for r in fresh]
                try:
                    self.bus.publish(entries)
                except TransportError as error:
                    self._publish_failed(error, [r.id for r in fresh])
                    return
                self._unmarked.update(r.id for r in fresh)
                if not self._mark_queued:
                    self._mark_queued = True
                    me = self.actor_ref
                    self.system.scheduler.call_later(MARK_DELAY_SECONDS,
                                                     functools.partial(_safe_tell, me, _MarkSent()))
                self._published(len(fresh))
            self._cursor = rows[-1].id
            if len(rows) < BATCH:
                return

    def _mark_sent(self) -> bool:
        """Write the pending "sent" marks; False when the database cannot be written (they wait)."""
        if not self._unmarked:
            return True
        if self.storage.fault is not None:
            return False  # the probe writes them once the disk is back
        ids = sorted(self._unmarked)
        try:
            with write_transaction(self.conn):
                outbox.mark_sent(self.conn, ids, now_text())
        except sqlite3.Error as error:
            if self.storage.report(error) is None:
                raise
            return False
        self._unmarked.difference_update(ids)
        return True

    def _sweep_was_busy(self) -> bool:
        """Whether the sweep just run (or the relay since the last one) had anything to do: then the
        next sweep comes at the fast pace, otherwise later and later."""
        published, self._swept_published = self._swept_published, self.published_total
        return bool(self.published_total != published or self._unmarked or self.storage.fault is not None
                    or self._backoff or self._owed_reconcile)

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
        if self.storage.fault is None:
            try:
                with write_transaction(self.conn):
                    outbox.record_failure(self.conn, row_ids[:1], str(error), now_text())
            except sqlite3.Error as db_error:
                if self.storage.report(db_error) is None:
                    raise
        me = self.actor_ref
        self.system.scheduler.call_later(self._backoff, lambda: _safe_tell(me, Flush()))

    def _maybe_trim(self) -> None:
        """Drop stream entries nobody needs: those every group acknowledged (SQLite keeps the
        history), and entries of the streams nobody here consumes once older than ``stream_days``."""
        every = min(TRIM_EVERY_SECONDS, float(self.retention.sweep_seconds))
        if time.monotonic() - self._last_trim < every or not self.services.bus.healthy:
            return
        self._last_trim = time.monotonic()
        cut_ms = int((time.time() - float(self.retention.stream_days) * 86_400) * 1000)
        try:
            self.stream_entries_trimmed += self.bus.trim_acknowledged(self.topics)
            self.stream_entries_trimmed += self.bus.trim_older_than(self.services.topics.all_integrations(), cut_ms)
        except TransportError as error:
            log.debug("stream trim skipped: %s", error)

    # -- a database that cannot be written ------------------------------------------------

    def _probe_storage(self) -> None:
        """While the database cannot be written, try a small write; resume when it succeeds."""
        if self.storage.fault is None or not self.storage.ready_to_probe():
            return
        try:
            with write_transaction(self.conn):
                marks.probe(self.conn, now_text())
        except sqlite3.Error as error:
            if self.storage.report(error) is None:
                log.debug("storage probe failed: %s", error)  # locked, say: the next sweep tries again
            return
        self.storage.clear()
        self._mark_sent()
        if self._owed_reconcile:
            self._reconcile(self._owed_reconcile)
        self._queue_flush()

    # -- retention ------------------------------------------------------------------------

    def _prune(self, resume: bool, ledger: bool) -> None:
        """One window of the retention sweep (outbox first, then ledger); the next one follows
        after a pause.

        The pause is twice what the window took (at least ``PRUNE_PAUSE_SECONDS``): the sweep
        holds the write lock and this mailbox a third of the time at most, so a large backlog
        (the first sweep over a long history) slows writes down a little instead of queueing
        them behind a million deletes.  A part with nothing (more) to delete ends at once, and
        the sweep waits for the next tick.
        """
        if resume != self._pruning:
            return  # a tick while a sweep is under way, or the window of a sweep that ended
        if not resume:
            self._pruning = True
            self._prune_after = 0
        if self.storage.fault is not None:
            self._end_prune(completed=False)
            return  # a delete needs room in the WAL too: the next sweep prunes
        started = time.monotonic()
        try:
            more = self._prune_ledger() if ledger else self._prune_outbox()
        except sqlite3.Error as error:
            if self.storage.report(error) is None:
                raise
            self._end_prune(completed=False)  # the next sweep starts over, once the disk is back
            return
        if not more:
            if ledger:
                self._end_prune(completed=True)
                return
            ledger = True  # the outbox is done: the ledger's windows follow
        pause = max(PRUNE_PAUSE_SECONDS, 2 * (time.monotonic() - started))
        self.system.scheduler.call_later(pause, functools.partial(_safe_tell, self.actor_ref,
                                                                  _Prune(resume=True, ledger=ledger)))

    def _prune_outbox(self) -> bool:
        """Delete one window of done outbox rows; whether more windows follow."""
        cutoff = format_time(utc_now() - timedelta(days=float(self.retention.outbox_days)))
        window = retention.window(self.conn, self.services.topics, cutoff=cutoff, after_id=self._prune_after)
        if window.ids:
            with write_transaction(self.conn):
                deleted = retention.delete(self.conn, window.ids)
            self.pruned_total += deleted
        self._prune_after = 0 if window.done else window.last_id
        return not window.done

    def _prune_ledger(self) -> bool:
        """Delete the ledger rows of one window of old events; whether more windows follow.

        The window starts from the position persisted in ``forum_marks``, so there is none to keep
        here, and a window gone stale (a projection rebuilt meanwhile) is simply read again from
        the marks as they are now.
        """
        cutoff = format_time(utc_now() - timedelta(days=float(self.retention.ledger_days)))
        window = ledger_retention.window(self.conn, cutoff=cutoff)
        deleted: int | None = 0
        if window.event_ids:
            with write_transaction(self.conn):
                deleted = ledger_retention.delete(self.conn, window, now_text())
        self.ledger_floor = ledger_retention.floor(self.conn)
        if deleted is None:
            return True
        self.ledger_rows_deleted += deleted
        return bool(window.event_ids) and not window.done

    def _end_prune(self, *, completed: bool) -> None:
        self._pruning = False
        self._prune_after = 0
        if completed:
            self.retention_sweeps += 1

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
        """Republish commands without a verdict and events some projection has not applied.

        Bounded by the unapplied work: commands above the handler's persisted decided floor,
        events above the lowest projection checkpoint.  Owed until the database can be written.
        """
        self._rescan()  # marks first, so none lands on a row this pass sends back to pending
        if self.storage.fault is not None or self._unmarked:
            self._owe_reconcile(reason)
            return {"commands_requeued": 0, "events_republished": 0}
        now = now_text()
        topics = self.services.topics
        decided = marks.read(self.conn, marks.DECIDED_FLOOR) or 0
        try:
            with write_transaction(self.conn):
                commands = outbox.requeue_unfinished_commands(self.conn, topics.command_prefix, now, decided)
        except sqlite3.Error as error:
            if self.storage.report(error) is None:
                raise
            self._owe_reconcile(reason)
            return {"commands_requeued": 0, "events_republished": 0}
        self._owed_reconcile = ""
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

    def _owe_reconcile(self, reason: str) -> None:
        if not self._owed_reconcile:
            log.warning("reconcile (%s) waits until the database can be written", reason)
        self._owed_reconcile = reason

    def _replay(self, message_id: str) -> dict[str, str]:
        # Publish inside the transaction that marks it replayed: a refused publish rolls the
        # mark back (the message stays parked, nothing is lost), and the consumer cannot
        # park the replayed entry again before the mark is committed.
        fault = self.storage.fault
        if fault is not None:
            raise storage.unavailable(fault)
        try:
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
        except sqlite3.Error as error:
            fault = self.storage.report(error)
            if fault is None:
                raise
            raise storage.unavailable(fault) from None
        log.info("replayed parked message %s on %s", message_id, topic)
        return {"message_id": message_id, "topic": topic, "status": "replayed"}


def _safe_tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the relay restarted; its sweep takes over
        pass
