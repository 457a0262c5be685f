"""``control_state``: per (run_id, agent_name), what the agent's control signals say.

* ``guidance_request``: pending guidance with its question, context and event id;
* ``guidance_answer``: clears the pending request (question, context and event id too);
* ``completion``: completion signalled, with the optional summary;
* ``validation``: last validation status and done criteria.

Every signal also records the ticket, control thread, time and sequence of the last signal.
The (run, agent) key is taken from the signal payload (which requires both), falling back to
the envelope.
"""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

from metawsm.forum.messages import ControlSignalled, EventMessage


def _text(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    return value if isinstance(value, str) else ""


class ControlStateProjection:
    name: ClassVar[str] = "control_state"

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        payload = event.payload
        if not isinstance(payload, ControlSignalled):
            return
        env = event.envelope
        fields = payload.payload or {}
        run_id = _text(fields, "run_id") or env.run_id or ""
        agent_name = _text(fields, "agent_name") or env.agent_name or ""
        key = (run_id, agent_name)
        conn.execute(
            "INSERT INTO forum_control_state (run_id, agent_name, ticket, thread_id, last_signal_at,"
            " last_event_sequence) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, agent_name) DO UPDATE SET ticket = excluded.ticket,"
            " thread_id = excluded.thread_id, last_signal_at = excluded.last_signal_at,"
            " last_event_sequence = excluded.last_event_sequence",
            (*key, env.ticket, env.thread_id, env.occurred_at, event.sequence),
        )
        control_type = payload.control_type or _text(fields, "control_type")
        if control_type == "guidance_request":
            conn.execute(
                "UPDATE forum_control_state SET pending_guidance = 1, pending_question = ?,"
                " pending_context = ?, pending_event_id = ? WHERE run_id = ? AND agent_name = ?",
                (_text(fields, "question"), _text(fields, "context"), env.event_id, *key),
            )
        elif control_type == "guidance_answer":
            conn.execute(
                "UPDATE forum_control_state SET pending_guidance = 0, pending_question = '',"
                " pending_context = '', pending_event_id = '' WHERE run_id = ? AND agent_name = ?",
                key,
            )
        elif control_type == "completion":
            conn.execute(
                "UPDATE forum_control_state SET completion_signalled = 1, completion_summary = ?"
                " WHERE run_id = ? AND agent_name = ?",
                (_text(fields, "summary"), *key),
            )
        elif control_type == "validation":
            conn.execute(
                "UPDATE forum_control_state SET validation_status = ?, validation_done_criteria = ?"
                " WHERE run_id = ? AND agent_name = ?",
                (_text(fields, "status"), _text(fields, "done_criteria"), *key),
            )

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM forum_control_state")
