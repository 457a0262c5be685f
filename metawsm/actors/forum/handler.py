"""CommandHandler: applies command messages to the write model, one transaction per delivery.

Each command runs inside a savepoint: a command that crashes (a bug, not a refusal) is
rolled back alone and reported failed, so one poison entry cannot hold back the others.
Refusals are recorded as verdicts (``forum_command_results``) and told to the broker so a
waiting caller hears about them; applied commands are announced later, by the
``thread_views`` projection, once their event is visible.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, ClassVar

from metawsm.actors.forum.messages import BROKER, RELAY, CommandsDecided, Deliver, DeliveryReport, WorkAvailable
from metawsm.actors.managed import ManagedActor
from metawsm.clock import now_text
from metawsm.forum.messages import CommandMessage
from metawsm.forum.write_model import CommandOutcome, apply_command
from metawsm.store import write_transaction

log = logging.getLogger("metawsm.forum")


class CommandHandler(ManagedActor):
    kind: ClassVar[str] = "handler"

    def setup(self) -> None:
        services = self.system.services
        self.topics = services.topics
        self.conn: sqlite3.Connection = services.db.connect()
        self.applied_total = 0
        self.rejected_total = 0

    def teardown(self) -> None:
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"applied_total": self.applied_total, "rejected_total": self.rejected_total}

    def handle(self, message: Any) -> Any:
        if isinstance(message, Deliver):
            return self._apply(message)
        return super().handle(message)

    def _apply(self, delivery: Deliver) -> DeliveryReport:
        failed: dict[str, str] = {}
        decided: list[CommandOutcome] = []
        events = 0
        now = now_text()
        with write_transaction(self.conn):
            for entry in delivery.entries:
                command = entry.message
                if not isinstance(command, CommandMessage):
                    failed[entry.key] = f"not a command: {type(command).__name__}"
                    continue
                self.conn.execute("SAVEPOINT command")
                try:
                    outcome, event = apply_command(self.conn, command, self.topics, now)
                except Exception as error:  # noqa: BLE001 - isolate a poison command
                    self.conn.execute("ROLLBACK TO command")
                    self.conn.execute("RELEASE command")
                    failed[entry.key] = f"{type(error).__name__}: {error}"
                    log.warning("command %s failed: %s", command.envelope.event_id, failed[entry.key])
                    continue
                self.conn.execute("RELEASE command")
                if event is not None:
                    events += 1
                    self.applied_total += 1
                else:
                    decided.append(outcome)
                    if outcome.status == "rejected":
                        self.rejected_total += 1
        if events:
            self.system.tell(RELAY, WorkAvailable())
        if decided:
            self.system.tell(BROKER, CommandsDecided(outcomes=decided))
        return DeliveryReport(failed=failed)
