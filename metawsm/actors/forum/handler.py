"""CommandHandler: applies command messages to the write model, one transaction per delivery.

Commands apply in **intake order** (their ``forum_outbox`` id), whatever order the streams
deliver them in: one stream per command topic means an ``add_post`` can be read before the
``open_thread`` or ``close_thread`` accepted before it, and a reconcile or a redelivery
republishes old commands after newer ones.  So before applying a delivered command the
handler applies, from the outbox (the source of truth), every earlier command that has no
verdict yet; their own stream entries then find the verdict recorded and are no-ops.  Entries
without an outbox row (foreign producers) apply in delivery order after the others.

A command that crashes (a bug, not a refusal) is rolled back alone and reported failed, so
one poison entry cannot hold back the others: the batch is applied straight first and, only
if something raised, rolled back and redone with each command in its own savepoint.
Refusals and no-ops are recorded as verdicts (``forum_command_results``) and told to the
broker so a waiting caller hears about them; applied commands are announced later, by the
``thread_views`` projection, once their event is visible.

The **decided floor** (every command at or below this outbox id has a verdict or is parked) is
persisted in ``forum_marks`` by the same transaction that records the verdicts, so a start reads
it and scans only the commands above it: start-up costs what is left to apply, not the history.

A database that cannot be written (a full disk) is not a command's fault: the delivery is
answered "retry" with a delay (:mod:`metawsm.actors.storage`), nothing is counted against the
commands, and the handler keeps running until the relay's probe finds the disk writable again.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, ClassVar

import msgspec

from metawsm.actors import storage
from metawsm.actors.forum.messages import BROKER, RELAY, CommandsDecided, Deliver, DeliveryReport, WorkAvailable
from metawsm.actors.managed import ManagedActor
from metawsm.clock import now_text
from metawsm.forum import marks
from metawsm.forum.messages import CommandMessage, decode_bus_message
from metawsm.forum.write_model import CommandOutcome, apply_command
from metawsm.store import read_transaction, write_transaction
from metawsm.store.faults import StorageFault

log = logging.getLogger("metawsm.forum")

# A single request, from the consumer: Deliver -> DeliveryReport (the entries that failed).
HandlerMessage = Deliver

# Commands whose verdict is missing, in intake order, between two outbox ids.  Parked rows
# are skipped: they wait for an operator's replay.
_Result = tuple[int | None, str | None, CommandMessage, CommandOutcome | None, Any, str]
_UNDECIDED = (
    "SELECT o.id, o.message_id, o.payload_json FROM forum_outbox o"
    " WHERE o.id > ? AND o.id < ? AND o.topic >= ? AND o.topic < ? AND o.status != 'parked'"
    " AND NOT EXISTS (SELECT 1 FROM forum_command_results r"
    " WHERE r.event_id = json_extract(o.payload_json, '$.envelope.event_id'))"
    " ORDER BY o.id"
)


class CommandHandler(ManagedActor):
    kind: ClassVar[str] = "handler"

    def setup(self) -> None:
        services = self.system.services
        self.topics = services.topics
        self.storage = services.storage
        self.conn: sqlite3.Connection = services.db.connect()
        prefix = self.topics.command_prefix + "."
        self._topic_range = (prefix, prefix[:-1] + chr(ord(".") + 1))
        self.applied_total = 0
        self.rejected_total = 0
        self.applied_early = 0
        self.postponed = 0  # deliveries answered "retry" because the database could not be written
        # Every command at or below this outbox id has a verdict (or is parked).
        self.floor = self._initial_floor()

    def teardown(self) -> None:
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "applied_total": self.applied_total,
            "rejected_total": self.rejected_total,
            "applied_ahead_of_delivery": self.applied_early,
            "decided_floor": self.floor,
            "postponed_deliveries": self.postponed,
        }

    def handle(self, message: Any) -> Any:
        match message:
            case Deliver():
                return self._apply(message)
            case _:
                return super().handle(message)

    # -- ordering ---------------------------------------------------------------------------

    def _initial_floor(self) -> int:
        """The persisted floor, moved up past whatever was decided above it.

        Only the rows above the persisted floor are scanned (the ones not applied yet, and the
        events written since), whatever the history holds.  A database from before the mark
        existed is scanned once, and the floor found is persisted at once.
        """
        # One snapshot: the intake keeps committing meanwhile, and a command committed between
        # "nothing undecided" and "the newest id" must not end up at or below the floor.
        with read_transaction(self.conn):
            known = marks.read(self.conn, marks.DECIDED_FLOOR)
            start = known or 0
            first_open = self.conn.execute(
                "SELECT MIN(o.id) FROM forum_outbox o WHERE o.id > ? AND o.topic >= ? AND o.topic < ?"
                " AND o.status != 'parked' AND NOT EXISTS (SELECT 1 FROM forum_command_results r"
                " WHERE r.event_id = json_extract(o.payload_json, '$.envelope.event_id'))",
                (start, *self._topic_range),
            ).fetchone()[0]
            newest = int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM forum_outbox").fetchone()[0])
        floor = newest if first_open is None else int(first_open) - 1
        floor = max(floor, start)
        if known is None:
            self._persist_floor(floor)
        return floor

    def _persist_floor(self, floor: int) -> None:
        """Write the floor found by the one-time scan (best effort: the next apply writes it too)."""
        try:
            with write_transaction(self.conn):
                marks.write(self.conn, marks.DECIDED_FLOOR, floor, now_text())
        except sqlite3.Error as error:
            if self.storage.report(error) is None:
                raise

    def _positions(self, message_ids: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        ids = [m for m in set(message_ids) if m]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row_id, message_id in self.conn.execute(
                f"SELECT id, message_id FROM forum_outbox WHERE message_id IN ({marks})", chunk
            ):
                found[message_id] = int(row_id)
        return found

    def _plan(self, delivery: Deliver, failed: dict[str, str]) -> list[tuple[int | None, str | None, CommandMessage]]:
        """(outbox id, entry key, command) in the order to apply; key None = applied ahead."""
        commands = []
        for entry in delivery.entries:
            if isinstance(entry.message, CommandMessage):
                commands.append(entry)
            else:
                failed[entry.key] = f"not a command: {type(entry.message).__name__}"
        positions = self._positions([e.message_id for e in commands])
        ordered: list[tuple[int | None, str | None, CommandMessage]] = []
        foreign: list[tuple[int | None, str | None, CommandMessage]] = []
        for entry in commands:
            position = positions.get(entry.message_id)
            (foreign if position is None else ordered).append((position, entry.key, entry.message))
        if ordered:
            newest = max(p for p, _, _ in ordered if p is not None)
            delivered = {p for p, _, _ in ordered}
            for row_id, message_id, payload in self.conn.execute(
                _UNDECIDED, (self.floor, newest, *self._topic_range)
            ).fetchall():
                if row_id in delivered:
                    continue
                try:
                    message = decode_bus_message(payload)
                except (msgspec.DecodeError, msgspec.ValidationError) as error:
                    log.warning("outbox command %s cannot be decoded: %s", message_id, error)
                    continue
                if isinstance(message, CommandMessage):
                    ordered.append((int(row_id), None, message))
            ordered.sort(key=lambda item: item[0])  # type: ignore[arg-type, return-value]  # the row id is an int in every entry
        return ordered + foreign

    # -- applying ---------------------------------------------------------------------------

    def _apply(self, delivery: Deliver) -> DeliveryReport:
        fault = self.storage.fault
        if fault is not None:
            return self._postpone(delivery, fault)  # the relay's probe says when to try again
        failed: dict[str, str] = {}
        decided: list[CommandOutcome] = []
        events = 0
        now = now_text()
        # Planned before BEGIN IMMEDIATE, so the write lock is held only while applying: what
        # the plan reads cannot change meanwhile (outbox ids are fixed, and verdicts are only
        # written by this actor; a verdict recorded since is seen by apply_command anyway).
        plan = self._plan(delivery, failed)
        try:
            try:
                results, floor = self._run(plan, now, isolate=False)
            except Exception as crash:  # a command crashed: redo the batch command by command
                if self.storage.report(crash) is not None:
                    raise  # a full disk is no command's fault: isolating would only fail again
                results, floor = self._run(plan, now, isolate=True)
        except sqlite3.Error as db_error:
            fault = self.storage.report(db_error)
            if fault is None:
                raise
            return self._postpone(delivery, fault)
        for _, key, command, outcome, event, problem in results:
            if outcome is None:
                log.warning("command %s failed: %s", command.envelope.event_id, problem)
                if key is not None:
                    failed[key] = problem
                continue
            if key is None:
                self.applied_early += 1
            if event is not None:
                events += 1
                self.applied_total += 1
            elif outcome.status != "applied":
                # Rejected or unchanged (now, or recorded by an earlier delivery).  A
                # redelivered *applied* command is not re-announced: its caller hears
                # about it from thread_views, once its event is visible.
                decided.append(outcome)
                if outcome.status == "rejected":
                    self.rejected_total += 1
        self.floor = floor
        if events:
            self.system.tell(RELAY, WorkAvailable())
        if decided:
            self.system.tell(BROKER, CommandsDecided(outcomes=decided))
        return DeliveryReport(failed=failed)

    def _postpone(self, delivery: Deliver, fault: StorageFault) -> DeliveryReport:
        """Nothing applied: the consumer delivers again later, without counting an attempt."""
        self.postponed += 1
        self.system.tell(RELAY, WorkAvailable())  # the relay's sweep probes the disk: at the fast pace now
        error = storage.retry_error(fault)
        return DeliveryReport(failed={entry.key: error for entry in delivery.entries},
                              retry_after=storage.RETRY_SECONDS)

    def _next_floor(self, results: list[_Result]) -> int:
        """The decided floor once ``results`` are committed: the newest outbox id decided, but
        below the lowest one that failed (it still waits for its verdict)."""
        newest = self.floor
        stuck: int | None = None
        for position, _, _, outcome, _, _ in results:
            if position is None:
                continue
            if outcome is None:
                stuck = position if stuck is None else min(stuck, position)
            else:
                newest = max(newest, position)
        return newest if stuck is None else min(newest, stuck - 1)

    def _run(self, plan: list[tuple[int | None, str | None, CommandMessage]], now: str, *, isolate: bool
             ) -> tuple[list[_Result], int]:
        """Apply the plan in one transaction; return the results and the new decided floor.

        ``isolate=False`` (the usual case) applies the commands straight; any exception rolls
        the whole batch back and the caller redoes it with ``isolate=True``: each command in a
        savepoint, so a command that crashes (a bug, not a refusal) is rolled back alone and
        reported failed.  Two SQLite calls less per command when nothing crashes.  The floor
        is persisted in the same transaction, so it is never ahead of the verdicts it stands for.
        """
        results: list[_Result] = []
        with write_transaction(self.conn):
            for position, key, command in plan:
                if isolate:
                    self.conn.execute("SAVEPOINT command")
                try:
                    outcome, event = apply_command(self.conn, command, self.topics, now)
                except Exception as error:
                    if not isolate or self.storage.report(error) is not None:
                        raise  # a full disk fails the whole batch, never one command
                    self.conn.execute("ROLLBACK TO command")
                    self.conn.execute("RELEASE command")
                    results.append((position, key, command, None, None, f"{type(error).__name__}: {error}"))
                    continue
                if isolate:
                    self.conn.execute("RELEASE command")
                results.append((position, key, command, outcome, event, ""))
            floor = self._next_floor(results)
            if floor != self.floor:
                marks.write(self.conn, marks.DECIDED_FLOOR, floor, now)
        return results, floor
