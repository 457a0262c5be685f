"""Control signals as read back: state per (run, agent) and the control threads.

``control_state`` reads the ``control_state`` projection (pending guidance, completion, last
validation); ``control_threads`` reads ``forum_control_threads``, the write model's record of
the one control thread per (run, agent).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from metawsm.forum.reads.db import rows
from metawsm.forum.reads.filters import equal_to, text_filter, where
from metawsm.forum.reads.rows import as_text, time_or_none
from metawsm.forum.views import ControlStateView, ControlThreadView


def control_state(
    conn: sqlite3.Connection, run_id: str | None = None, agent_name: str | None = None
) -> list[ControlStateView]:
    """Control state per (run, agent), ordered by run then agent."""
    params: list[Any] = []
    clauses = equal_to(
        (("run_id", text_filter(run_id, "run_id")), ("agent_name", text_filter(agent_name, "agent_name"))), params
    )
    found = rows(
        conn,
        "SELECT * FROM forum_control_state"
        + where(clauses)
        + " ORDER BY run_id, agent_name",
        params,
    )
    return [
        ControlStateView(
            run_id=r["run_id"],
            agent_name=r["agent_name"],
            ticket=as_text(r["ticket"]),
            thread_id=as_text(r["thread_id"]),
            pending_guidance=bool(r["pending_guidance"]),
            pending_question=as_text(r["pending_question"]),
            pending_context=as_text(r["pending_context"]),
            pending_event_id=as_text(r["pending_event_id"]),
            completion_signalled=bool(r["completion_signalled"]),
            completion_summary=as_text(r["completion_summary"]),
            validation_status=as_text(r["validation_status"]),
            validation_done_criteria=as_text(r["validation_done_criteria"]),
            last_signal_at=time_or_none(r["last_signal_at"]),
            last_event_sequence=int(r["last_event_sequence"]),
        )
        for r in found
    ]


def control_threads(
    conn: sqlite3.Connection, ticket: str | None = None, run_id: str | None = None
) -> list[ControlThreadView]:
    """Control threads, oldest first."""
    params: list[Any] = []
    clauses = equal_to((("ticket", text_filter(ticket, "ticket")), ("run_id", text_filter(run_id, "run_id"))), params)
    found = rows(
        conn,
        "SELECT run_id, agent_name, thread_id, ticket, created_at FROM forum_control_threads"
        + where(clauses)
        + " ORDER BY created_at, run_id, agent_name",
        params,
    )
    return [
        ControlThreadView(
            run_id=r["run_id"], agent_name=r["agent_name"], thread_id=r["thread_id"], ticket=r["ticket"],
            created_at=r["created_at"],
        )
        for r in found
    ]
