"""The operator: supervision decisions taken inside the daemon, by rules (docs/operator.md).

This slice has one rule, ``escalate_guidance``: a guidance request left unanswered for
``forum.sla.escalation_minutes`` raises its control thread to ``urgent`` and adds a system post
saying why. Each decision is claimed in ``operator_decisions`` before it is executed, keyed by its
cause (the pending guidance event id), so it is taken once, across restarts too.

Driven by one timer reading SQLite (the ``control_state`` projection and the guidance event's
time); a restart rebuilds nothing: the decisions table is the state.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import timedelta
from typing import Any, ClassVar

import msgspec

from metawsm.actors.bridge import CallbackReply
from metawsm.actors.forum.messages import INTAKE, Submit
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.actors.messages import Request
from metawsm.clock import format_time, now_text, parse_time, utc_now
from metawsm.forum.requests import AddPostRequest, SetPriorityRequest
from metawsm.store import schema_operator
from metawsm.store.db import write_transaction

log = logging.getLogger(__name__)

OPERATOR = "root/operator"
ACTOR_NAME = "operator"
ESCALATE_GUIDANCE = "escalate_guidance"


class _Tick(msgspec.Struct, frozen=True):
    """The operator's own timer: check the deadlines."""


# Tells only: _Tick (the timer) checks every rule against the database.
OperatorMessage = _Tick


def tick_seconds(escalation_minutes: float) -> float:
    """A check every second, or more often for an SLA of a few seconds (tests)."""
    return max(0.1, min(1.0, escalation_minutes * 60 / 10))


class Operator(ManagedActor):
    kind: ClassVar[str] = "operator"

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.conn: sqlite3.Connection | None = None
        self.decided = 0

    def setup(self) -> None:
        self.conn = self.system.services.db.connect()
        minutes = float(self.system.services.policy.forum.sla.escalation_minutes)
        self.tell_self_every(tick_seconds(minutes), _Tick())

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def describe(self) -> dict[str, Any]:
        return {"decided": self.decided}

    def handle(self, message: Any) -> Any:
        match message:
            case _Tick():
                self._escalate_guidance()
                return None
            case _:
                return super().handle(message)

    def _escalate_guidance(self) -> None:
        conn = self.conn
        if conn is None:
            return
        minutes = float(self.system.services.policy.forum.sla.escalation_minutes)
        deadline = format_time(utc_now() - timedelta(minutes=minutes))
        rows = conn.execute(
            "SELECT c.run_id, c.agent_name, c.ticket, c.thread_id, c.pending_event_id, e.occurred_at"
            " FROM forum_control_state c JOIN forum_events e ON e.event_id = c.pending_event_id"
            " JOIN runs r ON r.run_id = c.run_id"
            " WHERE c.pending_guidance = 1 AND c.pending_event_id != '' AND r.status != 'closed'"
            " AND e.occurred_at <= ? AND NOT EXISTS (SELECT 1 FROM operator_decisions d"
            " WHERE d.run_id = c.run_id AND d.intent = ? AND d.cause = c.pending_event_id)",
            (deadline, ESCALATE_GUIDANCE),
        ).fetchall()
        for run_id, agent_name, ticket, thread_id, event_id, asked_at in rows:
            waited = (utc_now() - parse_time(asked_at)).total_seconds() / 60
            reason = (f"guidance request from {agent_name} ({ticket}) unanswered for {waited:.1f} min"
                      f" (forum.sla.escalation_minutes = {minutes:g})")
            row = {"run_id": run_id, "intent": ESCALATE_GUIDANCE, "reason": reason, "cause": event_id,
                   "source": "rule", "executed": 1 if thread_id else 0, "at": now_text(), "thread_id": thread_id,
                   "ticket": ticket, "agent_name": agent_name}
            with write_transaction(conn):
                claimed = schema_operator.claim(conn, row)
            if not claimed or not thread_id:
                continue
            self.decided += 1
            log.info("operator: %s for run %s: %s", ESCALATE_GUIDANCE, run_id, reason)
            self._submit(SetPriorityRequest(priority="urgent", actor_type="system", actor_name=ACTOR_NAME),
                         thread_id, run_id)
            self._submit(AddPostRequest(body=f"Operator: {reason}; priority raised to urgent.",
                                        actor_type="system", actor_name=ACTOR_NAME), thread_id, run_id)

    def _submit(self, request: Any, thread_id: str, run_id: str) -> None:
        def refused(error: BaseException) -> None:
            log.warning("operator: run %s: the forum refused %s: %s", run_id, type(request).__name__, error)

        reply = CallbackReply(lambda _accepted: None, refused)
        if not self.system.tell(INTAKE, Request(body=Submit(request, thread_id, default_actor_type="system"),
                                                reply=reply)):
            log.warning("operator: run %s: the forum intake is not running; %s not sent", run_id,
                        type(request).__name__)
