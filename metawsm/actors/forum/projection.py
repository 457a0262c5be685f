"""Projection actor: folds events into one read model, exactly once and in sequence order.

The checkpoint (``forum_projection_checkpoints``) is the last sequence applied.  Events
at or below it are duplicates and are skipped; an event beyond ``checkpoint + 1`` means
some were not delivered yet, so the missing ones are read from ``forum_events`` (the source
of truth) and applied first.  Every applied event gets its ``forum_projection_events`` row
in the same transaction as the read-model change, and the actor catches up from SQLite on
start, so a restart or an emptied Redis never loses or repeats an event.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any, ClassVar

import msgspec

from metawsm.actors.forum.messages import BROKER, Applied, Deliver, DeliveryReport, Rebuild, RebuildResult
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.clock import now_text
from metawsm.forum.messages import EventMessage
from metawsm.forum.projections.registry import create_projection
from metawsm.forum.write_model import EVENT_COLUMNS, event_from_row
from metawsm.store import write_transaction

log = logging.getLogger("metawsm.forum")

CATCH_UP_BATCH = 1000
ANNOUNCED = frozenset({"thread_views", "control_state"})


class _CatchUp(msgspec.Struct, frozen=True):
    pass


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
        self.conn: sqlite3.Connection = services.db.connect()
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
        if isinstance(message, Deliver):
            return self._deliver(message)
        if isinstance(message, _CatchUp):
            self._catch_up()
            return None
        if isinstance(message, Rebuild):
            return self._rebuild()
        return super().handle(message)

    # -- applying -------------------------------------------------------------------------

    def _deliver(self, delivery: Deliver) -> DeliveryReport:
        keyed = sorted(
            ((e.message.sequence, e.key, e.message) for e in delivery.entries if isinstance(e.message, EventMessage)),
            key=lambda item: item[0],
        )
        failed: dict[str, str] = {}
        applied: list[EventMessage] = []
        try:
            with write_transaction(self.conn):
                for sequence, key, event in keyed:
                    if sequence <= self.checkpoint:
                        continue
                    applied.extend(self._apply_through(event))
                self._save_checkpoint()
        except _EventFailed as failure:
            self.checkpoint = self._load_checkpoint()
            # Re-apply in a fresh transaction everything before the failing event.
            applied = []
            bad = failure.event.sequence
            self._count_failure(failure.event, str(failure))
            for sequence, key, _ in keyed:
                if sequence == bad:
                    failed[key] = str(failure)
                elif sequence > bad:
                    failed[key] = f"retry: waiting for event {bad}"
            good = [event for sequence, _, event in keyed if self.checkpoint < sequence < bad]
            if good:
                with write_transaction(self.conn):
                    for event in good:
                        if event.sequence > self.checkpoint:
                            applied.extend(self._apply_through(event))
                    self._save_checkpoint()
        if applied:
            self.applied_total += len(applied)
            if self.announce:
                self.system.tell(BROKER, Applied(projection=self.name, events=applied))
        return DeliveryReport(failed=failed)

    def _apply_through(self, event: EventMessage) -> list[EventMessage]:
        """Apply any missing earlier events from SQLite, then ``event``; return all applied."""
        todo: list[EventMessage] = []
        if event.sequence > self.checkpoint + 1:
            rows = self.conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE sequence > ? AND sequence < ? ORDER BY sequence",
                (self.checkpoint, event.sequence),
            ).fetchall()
            todo.extend(event_from_row(row) for row in rows)
        todo.append(event)
        applied = []
        for item in todo:
            self._apply_one(item)
            applied.append(item)
        return applied

    def _apply_one(self, event: EventMessage) -> None:
        self.conn.execute("SAVEPOINT event")
        try:
            self.projection.apply(self.conn, event)
        except Exception as error:  # noqa: BLE001 - decide below whether to skip it
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
        self.conn.execute(
            "INSERT OR IGNORE INTO forum_projection_events (projection_name, event_id, applied_at) VALUES (?, ?, ?)",
            (self.name, event.envelope.event_id, now_text()),
        )
        self.checkpoint = event.sequence

    def _count_failure(self, event: EventMessage, error: str) -> None:
        count = self.failures.get(event.sequence, 0) + 1
        self.failures[event.sequence] = count
        log.warning("projection %s failed on event %d (attempt %d): %s", self.name, event.sequence, count, error)

    def _catch_up(self) -> None:
        """Apply everything in ``forum_events`` past the checkpoint (after a start or a gap)."""
        while True:
            rows = self.conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (self.checkpoint, CATCH_UP_BATCH),
            ).fetchall()
            if not rows:
                return
            events = [event_from_row(row) for row in rows]
            self._deliver(Deliver(entries=[_entry(e) for e in events]))
            if self.checkpoint < events[-1].sequence:
                return  # a failing event: the consumer's redelivery will retry it

    def _rebuild(self) -> RebuildResult:
        started = time.perf_counter()
        with write_transaction(self.conn):
            self.projection.clear(self.conn)
            self.conn.execute("DELETE FROM forum_projection_events WHERE projection_name = ?", (self.name,))
            self.checkpoint = 0
            replayed = 0
            while True:
                rows = self.conn.execute(
                    f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE sequence > ? ORDER BY sequence LIMIT ?",
                    (self.checkpoint, CATCH_UP_BATCH),
                ).fetchall()
                if not rows:
                    break
                for row in rows:
                    event = event_from_row(row)
                    self.projection.apply(self.conn, event)
                    self.conn.execute(
                        "INSERT OR IGNORE INTO forum_projection_events (projection_name, event_id, applied_at)"
                        " VALUES (?, ?, ?)",
                        (self.name, event.envelope.event_id, now_text()),
                    )
                    self.checkpoint = event.sequence
                    replayed += 1
            self._save_checkpoint()
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


def _entry(event: EventMessage) -> Any:
    from metawsm.actors.forum.messages import Entry

    return Entry(key=f"sqlite/{event.sequence}", message=event)
