"""Projection actor: folds events into one read model, exactly once and in sequence order.

The checkpoint (``forum_projection_checkpoints``) is the last sequence applied.  A delivered
event is a wake-up: the actor applies ``forum_events`` (the source of truth) from
``checkpoint + 1`` up to that event's sequence, so events at or below the checkpoint are
duplicates and events not delivered yet are read from SQLite.  A delivered event the log does
not hold (a forged or foreign entry) is refused and ends up parked; it never moves the
checkpoint.  Every applied event gets its ``forum_projection_events`` row in the same
transaction as the read-model change, and the actor catches up from SQLite on start, so a
restart or an emptied Redis never loses or repeats an event.

A database that cannot be written (a full disk) is no event's fault: nothing is counted against
the event (it is never skipped for it), the delivery is answered "retry" with a delay, and the
catch-up tries again later (:mod:`metawsm.actors.storage`).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from typing import Any, ClassVar

import msgspec

from metawsm.actors import storage
from metawsm.actors.forum.messages import BROKER, Applied, Deliver, DeliveryReport, Rebuild, RebuildResult
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.clock import now_text
from metawsm.forum import marks as forum_marks  # "marks" is a local name below
from metawsm.forum.messages import EventMessage
from metawsm.forum.projections.registry import create_projection
from metawsm.forum.write_model import EVENT_COLUMNS, event_from_row
from metawsm.store import write_transaction
from metawsm.store.faults import StorageFault

log = logging.getLogger("metawsm.forum")

CATCH_UP_BATCH = 1000
ANNOUNCED = frozenset({"thread_views", "control_state"})
_LEDGER = "INSERT OR IGNORE INTO forum_projection_events (projection_name, event_id, applied_at) VALUES (?, ?, ?)"


class _CatchUp(msgspec.Struct, frozen=True):
    """The projection's own "apply what the log holds past the checkpoint" (after a start)."""


# Requests: Deliver (from the consumer) -> DeliveryReport; Rebuild (from the API) ->
# RebuildResult.  Tell: _CatchUp, the projection's own.
ProjectionMessage = Deliver | Rebuild | _CatchUp


class _Stalled(Exception):
    """The database could not be written while applying: nothing of the batch is committed."""

    def __init__(self, fault: StorageFault) -> None:
        super().__init__(fault.reason)
        self.fault = fault


class _EventFailed(Exception):
    def __init__(self, event: EventMessage, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.event = event


class ProjectionActor(ManagedActor):
    kind: ClassVar[str] = "projection"

    def __init__(self, ctx: ActorContext, name: str) -> None:
        super().__init__(ctx)
        self.name = name
        self.projection = create_projection(name)

    def setup(self) -> None:
        services = self.system.services
        self.max_attempts = services.policy.forum.max_attempts
        self.storage = services.storage
        self.conn: sqlite3.Connection = services.db.connect()
        # Derived state, so no fsync per commit: a commit lost to a power cut rolls the checkpoint
        # back together with the tables, and the catch-up re-applies from the log.  WAL keeps
        # commits in order, so the next FULL commit (intake, handler) makes this one durable too.
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.events = services.event_cache
        self.checkpoint = self._load_checkpoint()
        self.failures: dict[int, int] = {}
        self.applied_total = 0
        self.announce = self.name in ANNOUNCED
        self.tell_self(_CatchUp())

    def teardown(self) -> None:
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"projection": self.name, "checkpoint": self.checkpoint, "applied_total": self.applied_total}

    def handle(self, message: Any) -> Any:
        match message:
            case Deliver():
                return self._deliver(message)
            case _CatchUp():
                self._catch_up()
                return None
            case Rebuild():
                return self._rebuild()
            case _:
                return super().handle(message)

    # -- applying -------------------------------------------------------------------------

    def _deliver(self, delivery: Deliver) -> DeliveryReport:
        """Apply the log up to the newest delivered event; the stream is only the wake-up.

        Events are applied as ``forum_events`` holds them, in sequence order.  A delivered event
        the log does not hold (a foreign or forged entry: unknown sequence, or another event id
        at that sequence) is refused, so the consumer parks it; it never moves the checkpoint.
        """
        fault = self.storage.fault
        if fault is not None:
            return self._postpone(delivery, fault)  # the relay's probe says when to try again
        failed: dict[str, str] = {}
        delivered: list[tuple[str, EventMessage]] = []
        for entry in delivery.entries:
            if isinstance(entry.message, EventMessage):
                delivered.append((entry.key, entry.message))
            else:
                failed[entry.key] = f"not an event: {type(entry.message).__name__}"
        logged = self._logged_ids([event.sequence for _, event in delivered])
        valid: list[tuple[str, EventMessage]] = []
        for key, event in delivered:
            if logged.get(event.sequence) == event.envelope.event_id:
                valid.append((key, event))
            else:
                failed[key] = (
                    f"event {event.envelope.event_id} (sequence {event.sequence}) is not in forum_events"
                )
        target = max((event.sequence for _, event in valid), default=0)
        applied, failure, fault = self._apply_up_to(target)
        if fault is not None:
            self._announce(applied)  # the batches committed before the disk filled
            return self._postpone(delivery, fault)
        if failure is not None:
            bad = failure.event.sequence
            self._count_failure(failure.event, str(failure))
            for key, event in valid:
                if event.sequence == bad:
                    failed[key] = str(failure)
                elif event.sequence > bad:
                    failed[key] = f"retry: waiting for event {bad}"
        self._announce(applied)
        return DeliveryReport(failed=failed)

    def _postpone(self, delivery: Deliver, fault: StorageFault) -> DeliveryReport:
        """Delivered again later without counting an attempt (the events are already in the log;
        only this projection's commit has to wait for the disk)."""
        error = storage.retry_error(fault)
        return DeliveryReport(failed={entry.key: error for entry in delivery.entries},
                              retry_after=storage.RETRY_SECONDS)

    def _logged_ids(self, sequences: list[int]) -> dict[int, str]:
        unique = sorted(set(sequences))
        found = self.events.event_ids(unique)  # whatever an earlier projection already read
        unique = [sequence for sequence in unique if sequence not in found]
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for sequence, event_id in self.conn.execute(
                f"SELECT sequence, event_id FROM forum_events WHERE sequence IN ({marks})", chunk
            ):
                found[int(sequence)] = event_id
        return found

    def _apply_up_to(self, target: int) -> tuple[list[EventMessage], _EventFailed | None, StorageFault | None]:
        """Apply ``forum_events`` (checkpoint, target], stopping at a failure or a full disk.

        Events are read and decoded *before* ``BEGIN IMMEDIATE`` (the log is append-only and
        only this actor moves its checkpoint, so nothing read can change), so the write lock
        is held only for the writes.  What was applied before a failing event is committed
        with the checkpoint; the failing event and those after it wait for a retry.  When the
        database cannot be written, the batches committed before are kept and the rest waits.
        """
        applied: list[EventMessage] = []
        failure: _EventFailed | None = None
        while failure is None and self.checkpoint < target:
            events = self._read_events(self.checkpoint, min(target, self.checkpoint + CATCH_UP_BATCH))
            if not events:
                break
            start = self.checkpoint
            try:
                batch, failure = self._apply_batch(events)
            except _Stalled as stalled:
                self.checkpoint = start  # rolled back
                return applied, None, stalled.fault
            except BaseException:
                self.checkpoint = start  # rolled back: the actor crashes and reloads it anyway
                raise
            applied.extend(batch)
        return applied, failure, None

    def _read_events(self, after: int, upto: int) -> list[EventMessage]:
        cached = self.events.range(after, upto)
        if cached is not None:
            return cached
        rows = self.conn.execute(
            f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE sequence > ? AND sequence <= ? ORDER BY sequence",
            (after, upto),
        ).fetchall()
        events = [event_from_row(row) for row in rows]
        self.events.add(events)
        return events

    def _apply_batch(self, events: list[EventMessage]) -> tuple[list[EventMessage], _EventFailed | None]:
        """One transaction for the batch.

        First try: every event applied straight, the ledger rows in one statement (no
        savepoint per event, which are two more SQLite calls per event).  Only if that raises
        is it rolled back and done again event by event, each in a savepoint, which isolates
        the failing event exactly as before; so is a batch holding an event that already
        failed.
        """
        try:
            return self._apply_batch_once(events)
        except sqlite3.Error as error:
            fault = self.storage.report(error)
            if fault is None:
                raise
            raise _Stalled(fault) from error

    def _apply_batch_once(self, events: list[EventMessage]) -> tuple[list[EventMessage], _EventFailed | None]:
        start = self.checkpoint
        now = now_text()
        if not any(event.sequence in self.failures for event in events):
            try:
                with write_transaction(self.conn):
                    for event in events:
                        self.projection.apply(self.conn, event)
                    self.conn.executemany(_LEDGER, [(self.name, e.envelope.event_id, now) for e in events])
                    self.checkpoint = events[-1].sequence
                    self._save_checkpoint()
                return events, None
            except Exception as error:  # redone below, event by event (unless the disk is full)
                self.checkpoint = start
                if self.storage.report(error) is not None:
                    raise  # a full disk is no event's fault: event by event would only fail again
        batch: list[EventMessage] = []
        failure: _EventFailed | None = None
        with write_transaction(self.conn):
            for event in events:
                try:
                    self._apply_one(event, now)
                except _EventFailed as error:
                    failure = error
                    break
                batch.append(event)
            self._save_checkpoint()
        return batch, failure

    def _announce(self, applied: list[EventMessage]) -> None:
        if applied:
            self.applied_total += len(applied)
            if self.announce:
                self.system.tell(BROKER, Applied(projection=self.name, events=applied))

    def _apply_one(self, event: EventMessage, now: str) -> None:
        self.conn.execute("SAVEPOINT event")
        try:
            self.projection.apply(self.conn, event)
        except Exception as error:
            if self.storage.report(error) is not None:
                raise  # never counted against the event, let alone skipped for it
            self.conn.execute("ROLLBACK TO event")
            self.conn.execute("RELEASE event")
            if self.failures.get(event.sequence, 0) + 1 < self.max_attempts:
                raise _EventFailed(event, error) from error
            log.error(
                "projection %s skips event %d (%s) after %d failures: %s",
                self.name, event.sequence, event.envelope.event_id, self.max_attempts, error,
            )
        else:
            self.conn.execute("RELEASE event")
        self.conn.execute(_LEDGER, (self.name, event.envelope.event_id, now))
        self.checkpoint = event.sequence

    def _count_failure(self, event: EventMessage, error: str) -> None:
        count = self.failures.get(event.sequence, 0) + 1
        self.failures[event.sequence] = count
        log.warning("projection %s failed on event %d (attempt %d): %s", self.name, event.sequence, count, error)

    def _catch_up(self) -> None:
        """Apply everything in ``forum_events`` past the checkpoint (after a start or a gap)."""
        if self.storage.fault is not None:
            self._catch_up_later()
            return
        latest = self.conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        applied, failure, fault = self._apply_up_to(int(latest))
        if failure is not None:  # the consumer's redelivery will retry it
            self._count_failure(failure.event, str(failure))
        if fault is not None:
            self._catch_up_later()
        self._announce(applied)

    def _catch_up_later(self) -> None:
        """Try the catch-up again once the disk may be writable again."""
        self.system.scheduler.call_later(storage.RETRY_SECONDS, functools.partial(_safe_tell, self.actor_ref,
                                                                                  _CatchUp()))

    def _rebuild(self) -> RebuildResult:
        """Clear the projection, then replay the log into it batch by batch.

        One transaction per ``CATCH_UP_BATCH`` events, not one for the whole log: a single
        transaction held the database write lock for as long as the replay took (seconds per
        100,000 events), long enough for writers to give up with ``database is locked`` on a
        large log.  Between batches other writers get the lock.  Readers meanwhile see the
        projection part-way rebuilt (its lag in health says how far); a crash part-way leaves a
        consistent checkpoint, from which the restarted actor's catch-up finishes the replay.
        """
        started = time.perf_counter()
        before = self.checkpoint
        fault = self.storage.fault
        if fault is not None:
            raise storage.unavailable(fault)
        try:
            with write_transaction(self.conn):
                self.projection.clear(self.conn)
                self.conn.execute("DELETE FROM forum_projection_events WHERE projection_name = ?", (self.name,))
                # The replay writes rows again for events whose rows the ledger retention already
                # deleted: the sweep starts over from the first event and deletes them once more.
                forum_marks.write(self.conn, forum_marks.LEDGER_SWEPT, 0, now_text())
                self.checkpoint = 0
                self._save_checkpoint()
        except sqlite3.Error as error:
            self.checkpoint = before  # rolled back
            fault = self.storage.report(error)
            if fault is None:
                raise
            raise storage.unavailable(fault) from None
        self.failures.clear()
        target = self.conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        applied, failure, fault = self._apply_up_to(int(target))  # batch by batch, like any catch-up
        if fault is not None:
            # Part-way: the batches committed stay, the catch-up finishes the replay later.
            self._announce([event for event in applied if event.sequence > before])
            self._catch_up_later()
            raise storage.unavailable(fault)
        if failure is not None:
            raise failure  # crash: the restarted actor resumes from the last committed batch
        fresh = [event for event in applied if event.sequence > before]  # not applied before the rebuild
        replayed = len(applied)
        # Events applied for the first time by the rebuild would otherwise never be announced
        # (their deliveries now find them at or below the checkpoint): a caller waiting for
        # one of them would hang until its budget ran out.
        self._announce(fresh)
        log.info("projection %s rebuilt from %d event(s)", self.name, replayed)
        return RebuildResult(
            projection=self.name,
            events_replayed=replayed,
            last_sequence=self.checkpoint,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    # -- checkpoint -----------------------------------------------------------------------

    def _load_checkpoint(self) -> int:
        row = self.conn.execute(
            "SELECT last_sequence FROM forum_projection_checkpoints WHERE projection_name = ?", (self.name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _save_checkpoint(self) -> None:
        self.conn.execute(
            "INSERT INTO forum_projection_checkpoints (projection_name, last_sequence, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT(projection_name) DO UPDATE SET last_sequence = excluded.last_sequence,"
            " updated_at = excluded.updated_at",
            (self.name, self.checkpoint, now_text()),
        )


def _safe_tell(ref: Any, message: Any) -> None:
    try:
        ref.tell(message)
    except Exception:  # noqa: BLE001 - the projection restarted; its own start catches up
        pass
