"""The pipeline as the debug endpoint shows it: outbox counts and rows, parked entries, the
newest events.

These read the transport tables (``forum_outbox``, ``forum_parked_messages``) and the log
directly, newest first.  ``parked_count`` counts poison entries not yet replayed, once per
message id whether the outbox row, the parked table or both record it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from metawsm.clock import parse_time
from metawsm.forum.enums import OutboxStatus
from metawsm.forum.reads.db import one, rows, snapshot
from metawsm.forum.reads.filters import DEFAULT_LIMIT, equal_to, parse_limit, text_filter, where
from metawsm.forum.reads.rows import EVENT_COLUMNS, as_text, event_view, time_or_none
from metawsm.forum.views import EventView, OutboxMessageView, OutboxStats, ParkedMessageView

_UNSENT = tuple(status.value for status in OutboxStatus if status is not OutboxStatus.SENT)


def _count(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()) -> int:
    found = one(conn, sql, params)
    return int(found[0]) if found is not None else 0


def outbox_stats(conn: sqlite3.Connection, now: Callable[[], datetime]) -> OutboxStats:
    """Counts by status, parked entries not yet replayed, and the oldest pending row's age."""
    with snapshot(conn):
        # Every status but "sent" by an index seek, and "sent" as the rest of a plain count: a
        # GROUP BY walked the whole status index, five times slower (240 ms at 2M rows, most of
        # health's cost with a long history; retention bounds the rows, docs/forum.md#retention).
        counts = {status: _count(conn, "SELECT count(*) FROM forum_outbox WHERE status = ?", (status,))
                  for status in _UNSENT}
        counts["sent"] = _count(conn, "SELECT count(*) FROM forum_outbox") - sum(counts.values())
        oldest_row = one(conn, "SELECT MIN(created_at) FROM forum_outbox WHERE status = 'pending'")
        parked_row = one(
            conn,
            "SELECT count(*) FROM (SELECT message_id FROM forum_outbox WHERE status = 'parked'"
            " UNION SELECT message_id FROM forum_parked_messages WHERE replayed_at IS NULL)",
        )
    oldest = oldest_row[0] if oldest_row is not None else None
    age = 0.0
    if oldest:
        try:
            age = max(0.0, (now() - parse_time(oldest)).total_seconds())
        except ValueError:
            age = 0.0
    return OutboxStats(
        pending_count=counts.get("pending", 0),
        processing_count=counts.get("processing", 0),
        failed_count=counts.get("failed", 0),
        parked_count=int(parked_row[0]) if parked_row is not None else 0,
        sent_count=counts.get("sent", 0),
        oldest_pending_at=oldest or None,
        oldest_pending_age_seconds=round(age, 6),
    )


def latest_outbox(
    conn: sqlite3.Connection, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
) -> list[OutboxMessageView]:
    """Newest outbox rows first; ticket/run filters read the message's envelope."""
    count = parse_limit(limit, DEFAULT_LIMIT)
    clauses, params = [], []
    for field_name, value in (("ticket", text_filter(ticket, "ticket")), ("run_id", text_filter(run_id, "run_id"))):
        if value is not None:
            clauses.append(
                "(CASE WHEN json_valid(payload_json)"
                f" THEN json_extract(payload_json, '$.envelope.{field_name}') END) = ?"
            )
            params.append(value)
    found = rows(
        conn,
        "SELECT id, message_id, topic, message_key, status, attempt_count, last_error, created_at,"
        " updated_at, sent_at FROM forum_outbox"
        + where(clauses)
        + " ORDER BY id DESC LIMIT ?",
        (*params, count),
    )
    return [
        OutboxMessageView(
            id=int(r["id"]), message_id=r["message_id"], topic=r["topic"], message_key=as_text(r["message_key"]),
            status=r["status"], attempt_count=int(r["attempt_count"]), last_error=as_text(r["last_error"]),
            created_at=r["created_at"], updated_at=r["updated_at"], sent_at=time_or_none(r["sent_at"]),
        )
        for r in found
    ]


def parked(conn: sqlite3.Connection, limit: Any = DEFAULT_LIMIT) -> list[ParkedMessageView]:
    """Parked stream entries, newest first (replayed ones too, with ``replayed_at``)."""
    count = parse_limit(limit, DEFAULT_LIMIT)
    found = rows(
        conn,
        "SELECT message_id, topic, stream, stream_entry_id, attempts, last_error, parked_at, replayed_at"
        " FROM forum_parked_messages ORDER BY parked_at DESC, message_id DESC LIMIT ?",
        (count,),
    )
    return [
        ParkedMessageView(
            message_id=r["message_id"], topic=r["topic"], stream=r["stream"],
            stream_entry_id=as_text(r["stream_entry_id"]), attempts=int(r["attempts"]),
            last_error=as_text(r["last_error"]), parked_at=r["parked_at"], replayed_at=time_or_none(r["replayed_at"]),
        )
        for r in found
    ]


def latest_events(
    conn: sqlite3.Connection, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
) -> list[EventView]:
    """The newest events first (debug snapshot)."""
    count = parse_limit(limit, DEFAULT_LIMIT)
    params: list[Any] = []
    clauses = equal_to((("ticket", text_filter(ticket, "ticket")), ("run_id", text_filter(run_id, "run_id"))), params)
    found = rows(
        conn,
        f"SELECT {EVENT_COLUMNS} FROM forum_events"
        + where(clauses)
        + " ORDER BY sequence DESC LIMIT ?",
        (*params, count),
    )
    return [event_view(r) for r in found]
