"""The event log as clients page through it: events after a cursor, and the latest sequence.

Event cursors are plain sequences (:func:`metawsm.forum.cursor.parse_event_cursor`); the
next cursor is the last sequence returned, or the given cursor itself when nothing is new,
so a client can always pass it back.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from metawsm.forum.cursor import parse_event_cursor
from metawsm.forum.reads.db import one, rows
from metawsm.forum.reads.filters import DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT, equal_to, parse_limit, text_filter
from metawsm.forum.reads.rows import EVENT_COLUMNS, event_view
from metawsm.forum.views import EventView


def events_after(
    conn: sqlite3.Connection,
    ticket: str | None = None,
    run_id: str | None = None,
    cursor: Any = 0,
    limit: Any = DEFAULT_EVENT_LIMIT,
) -> tuple[list[EventView], int]:
    """Events with ``sequence > cursor`` (optionally of a ticket/run), in order, and the next cursor."""
    after = parse_event_cursor(cursor)
    count = parse_limit(limit, DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT)
    params: list[Any] = [after]
    clauses = ["sequence > ?", *equal_to(
        (("ticket", text_filter(ticket, "ticket")), ("run_id", text_filter(run_id, "run_id"))), params
    )]
    found = rows(
        conn,
        f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE {' AND '.join(clauses)} ORDER BY sequence LIMIT ?",
        (*params, count),
    )
    events = [event_view(r) for r in found]
    return events, (events[-1].sequence if events else after)


def latest_sequence(conn: sqlite3.Connection) -> int:
    row = one(conn, "SELECT COALESCE(MAX(sequence), 0) FROM forum_events")
    return int(row[0]) if row is not None else 0
