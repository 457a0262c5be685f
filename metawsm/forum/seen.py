"""Seen markers: the forum's one direct write (``forum_thread_reads``, not an event).

A marker records the last event sequence a viewer (``viewer_type`` + ``viewer_id``) has seen
on a thread; the read side compares it with the thread's last event for ``is_unseen`` and
the unseen queue.  A marker never moves backwards: an older sequence leaves it (and its
``seen_at``) as it is.  A rebuild of the projections does not touch markers.

The thread must exist in the write model or the ``thread_views`` read model
(:class:`ThreadNotFound` otherwise); bad viewers and sequences are refused with
``invalid_value``.  Each call is one write transaction on a writable connection the caller
owns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any

from metawsm.clock import format_time, utc_now
from metawsm.forum.errors import ForumError, ThreadNotFound
from metawsm.forum.reads.filters import Viewer
from metawsm.forum.views import SeenMarker
from metawsm.store.db import write_transaction


def mark_seen(
    conn: sqlite3.Connection,
    thread_id: str,
    viewer_type: Any,
    viewer_id: Any,
    sequence: Any = None,
    *,
    now: Callable[[], datetime] = utc_now,
) -> SeenMarker:
    """Record that a viewer has seen ``thread_id`` up to ``sequence`` (default: the thread's
    latest event); returns the marker as stored."""
    try:
        viewer = Viewer.parse(viewer_type, viewer_id, required=True)
    except ForumError as exc:
        raise ForumError(exc.message, code="invalid_value") from None
    assert viewer is not None
    if sequence is not None and (isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0):
        raise ForumError("last_seen_event_sequence must be a non-negative integer", code="invalid_value")
    seen_at = format_time(now())
    with write_transaction(conn):
        exists = _one(
            conn,
            "SELECT 1 FROM forum_threads WHERE thread_id = :t"
            " UNION ALL SELECT 1 FROM forum_thread_views WHERE thread_id = :t LIMIT 1",
            {"t": thread_id},
        )
        if exists is None:
            raise ThreadNotFound(thread_id)
        if sequence is None:
            row = _one(
                conn,
                "SELECT COALESCE((SELECT MAX(sequence) FROM forum_events WHERE thread_id = :t),"
                " (SELECT last_event_sequence FROM forum_thread_views WHERE thread_id = :t), 0)",
                {"t": thread_id},
            )
            sequence = int(row[0]) if row is not None else 0
        conn.execute(
            "INSERT INTO forum_thread_reads (thread_id, viewer_type, viewer_id, last_seen_event_sequence,"
            " seen_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (thread_id, viewer_type, viewer_id) DO UPDATE SET"
            " seen_at = CASE WHEN excluded.last_seen_event_sequence >= last_seen_event_sequence"
            " THEN excluded.seen_at ELSE seen_at END,"
            " last_seen_event_sequence = MAX(last_seen_event_sequence, excluded.last_seen_event_sequence)",
            (thread_id, viewer.viewer_type, viewer.viewer_id, sequence, seen_at),
        )
        row = _one(
            conn,
            "SELECT last_seen_event_sequence, seen_at FROM forum_thread_reads"
            " WHERE thread_id = ? AND viewer_type = ? AND viewer_id = ?",
            (thread_id, viewer.viewer_type, viewer.viewer_id),
        )
    assert row is not None
    return SeenMarker(
        thread_id=thread_id, viewer_type=viewer.viewer_type, viewer_id=viewer.viewer_id,
        last_seen_event_sequence=int(row[0]), seen_at=row[1],
    )


def _one(conn: sqlite3.Connection, sql: str, params: Any) -> Any:
    found = conn.execute(sql, params).fetchall()
    return found[0] if found else None
