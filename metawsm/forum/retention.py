"""Retention of ``forum_outbox``: which rows nothing will ever need again (docs/forum.md#retention).

A row is **done**, and may be deleted once it is older than ``forum.retention.outbox_days``, when
it is ``sent`` and

* a command: decided, i.e. at or below the handler's decided floor (``forum_marks``) and either
  never parked or with a verdict recorded (a parked command replayed later may sit below the
  floor without one until it applies);
* an event: every projection's checkpoint is at or past its sequence;
* an integration message (nobody in this daemon consumes it): always, once sent.

Never the newest row of the table either: ``forum_outbox.id`` is a rowid without AUTOINCREMENT,
so deleting the row with the highest id would let SQLite hand that id out again, and the relay
and the handler rely on ids growing in commit order.

The sweep reads a window of the oldest ``sent`` rows (no transaction, no lock), decides each row
in Python, and the caller deletes the chosen ids in one short write transaction; then the next
window.  Rows are taken in id order, which is creation order, so the first row too new to go
ends the sweep: the cost is what can be deleted plus one window, never the whole history.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from metawsm.forum import marks
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.forum.topics import Topics
from metawsm.store import read_transaction

WINDOW = 500  # rows read (and at most deleted) per batch: about 10 ms, one short hold of the write lock
_CHUNK = 500  # ids per DELETE statement (SQLite's variable limit is 999 on old builds)

_WINDOW_SQL = (
    "SELECT o.id, o.topic, o.created_at, json_extract(o.payload_json, '$.sequence'),"
    " o.id <= ? AND (NOT EXISTS (SELECT 1 FROM forum_parked_messages p WHERE p.message_id = o.message_id)"
    " OR EXISTS (SELECT 1 FROM forum_command_results r"
    " WHERE r.event_id = json_extract(o.payload_json, '$.envelope.event_id')))"
    " FROM forum_outbox o WHERE o.status = 'sent' AND o.id > ? AND o.id < ? ORDER BY o.id LIMIT ?"
)


class Window(msgspec.Struct, frozen=True):
    """One batch of the sweep: the ids to delete, how far it read, and whether the sweep is over."""

    ids: list[int]
    last_id: int  # the next window starts after this id
    done: bool  # nothing older than the cutoff left past ``last_id``


def projected_through(conn: sqlite3.Connection) -> int:
    """The highest event sequence every projection has applied (0 while one has no checkpoint)."""
    rows = dict(conn.execute("SELECT projection_name, last_sequence FROM forum_projection_checkpoints").fetchall())
    if any(name not in rows for name in PROJECTION_NAMES):
        return 0
    return min(int(rows[name]) for name in PROJECTION_NAMES)


def window(conn: sqlite3.Connection, topics: Topics, *, cutoff: str, after_id: int = 0,
           limit: int = WINDOW) -> Window:
    """The done rows among the ``limit`` oldest sent rows after ``after_id`` created before ``cutoff``."""
    with read_transaction(conn):  # the floor, the checkpoints and the rows as of one moment
        newest = conn.execute("SELECT COALESCE(MAX(id), 0) FROM forum_outbox").fetchone()[0]
        floor = marks.read(conn, marks.DECIDED_FLOOR) or 0
        projected = projected_through(conn)
        rows = conn.execute(_WINDOW_SQL, (floor, after_id, newest, limit)).fetchall()
    ids: list[int] = []
    last = after_id
    for row_id, topic, created_at, sequence, decided in rows:
        if created_at >= cutoff:
            return Window(ids, last, True)  # ids follow creation order: the rest is newer still
        last = int(row_id)
        if topics.is_command(topic):
            done = bool(decided)
        elif topics.is_event(topic):
            done = sequence is not None and int(sequence) <= projected
        else:
            done = True
        if done:
            ids.append(last)
    return Window(ids, last, len(rows) < limit)


def delete(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Delete those rows if still ``sent``; call it inside the caller's write transaction."""
    deleted = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = list(ids[start:start + _CHUNK])
        placeholders = ",".join("?" * len(chunk))
        cursor = conn.execute(f"DELETE FROM forum_outbox WHERE status = 'sent' AND id IN ({placeholders})", chunk)
        deleted += cursor.rowcount
    return deleted
