"""Thread counts per (ticket, run, state, priority), from the ``thread_stats`` read model.

Rows come out ordered by ticket and run, then by the enums' own order (state as the state
machine lists it, priority from low to urgent), with unknown values last.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from metawsm.forum.enums import Priority, ThreadState
from metawsm.forum.reads.db import rows
from metawsm.forum.reads.filters import equal_to, text_filter, where
from metawsm.forum.reads.rows import as_text
from metawsm.forum.views import StatsRow

_STATE_ORDER = {s.value: i for i, s in enumerate(ThreadState)}
_PRIORITY_ORDER = {p.value: i for i, p in enumerate(Priority)}


def stats(conn: sqlite3.Connection, ticket: str | None = None, run_id: str | None = None) -> list[StatsRow]:
    """Thread counts per (ticket, run_id, state, priority), optionally of one ticket/run."""
    params: list[Any] = []
    clauses = equal_to((("ticket", text_filter(ticket, "ticket")), ("run_id", text_filter(run_id, "run_id"))), params)
    found = rows(
        conn,
        "SELECT ticket, run_id, state, priority, thread_count FROM forum_thread_stats"
        + where(clauses),
        params,
    )
    result = [
        StatsRow(
            ticket=r["ticket"], run_id=as_text(r["run_id"]), state=r["state"], priority=r["priority"],
            thread_count=int(r["thread_count"]),
        )
        for r in found
    ]
    result.sort(
        key=lambda s: (
            s.ticket, s.run_id, _STATE_ORDER.get(s.state, 99), s.state,
            _PRIORITY_ORDER.get(s.priority, 99), s.priority,
        )
    )
    return result
