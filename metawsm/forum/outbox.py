"""SQL for ``forum_outbox`` and ``forum_parked_messages``: the durable hand-off to Redis.

Producers insert rows inside their own write transaction; the relay claims pending rows in
id order, publishes them and marks them sent.  A row is never deleted before it is sent, nor
before what it carries is applied (:mod:`metawsm.forum.retention`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import msgspec

from metawsm import ids
from metawsm.forum.enums import OutboxStatus


class OutboxRow(msgspec.Struct, frozen=True):
    id: int
    message_id: str
    topic: str
    message_key: str
    payload: bytes


def enqueue(conn: sqlite3.Connection, topic: str, message_key: str, payload: bytes, now: str) -> str:
    """Insert one pending message (inside the caller's transaction); return its message id."""
    message_id = ids.message_id()
    conn.execute(
        "INSERT INTO forum_outbox (message_id, topic, message_key, payload_json, status,"
        " attempt_count, last_error, created_at, updated_at) VALUES (?, ?, ?, ?, 'pending', 0, '', ?, ?)",
        (message_id, topic, message_key, payload.decode(), now, now),
    )
    return message_id


def pending(conn: sqlite3.Connection, limit: int, after_id: int = 0) -> list[OutboxRow]:
    rows = conn.execute(
        "SELECT id, message_id, topic, message_key, payload_json FROM forum_outbox"
        " WHERE status = 'pending' AND id > ? ORDER BY id LIMIT ?",
        (after_id, limit),
    ).fetchall()
    return [OutboxRow(r[0], r[1], r[2], r[3] or "", r[4].encode()) for r in rows]


def mark_sent(conn: sqlite3.Connection, row_ids: Sequence[int], now: str) -> None:
    conn.executemany(
        "UPDATE forum_outbox SET status = 'sent', sent_at = ?, updated_at = ?,"
        " attempt_count = attempt_count + 1 WHERE id = ? AND status = 'pending'",
        [(now, now, row_id) for row_id in row_ids],
    )


def record_failure(conn: sqlite3.Connection, row_ids: Sequence[int], error: str, now: str) -> None:
    conn.executemany(
        "UPDATE forum_outbox SET attempt_count = attempt_count + 1, last_error = ?, updated_at = ?"
        " WHERE id = ? AND status = 'pending'",
        [(error[:500], now, row_id) for row_id in row_ids],
    )


_REQUEUE = (
    "UPDATE forum_outbox SET status = 'pending', updated_at = ? WHERE {rows}"
    " AND status IN ('sent', 'processing', 'failed') AND topic LIKE ? ESCAPE '\\'"
    " AND NOT EXISTS (SELECT 1 FROM forum_command_results r"
    " WHERE r.event_id = json_extract(forum_outbox.payload_json, '$.envelope.event_id'))"
)


def requeue_unfinished_commands(conn: sqlite3.Connection, command_prefix: str, now: str, floor: int = 0) -> int:
    """Reconcile: commands sent to Redis whose verdict is not recorded go back to pending.

    Only rows above ``floor`` (the handler's decided floor: every command at or below it has a
    verdict or is parked) and replayed parked rows (which may sit below it undecided) can lack a
    verdict, so only those are looked at: the cost is the unapplied work, not the history.
    """
    prefix = _like_prefix(command_prefix)
    requeued = conn.execute(_REQUEUE.format(rows="id > ?"), (now, floor, prefix)).rowcount
    # One lookup per replayed message id (few), by its unique index: a single statement joining
    # the parked table let SQLite walk every sent row below the floor instead.
    replayed = [row[0] for row in conn.execute(
        "SELECT message_id FROM forum_parked_messages WHERE replayed_at IS NOT NULL")]
    for message_id in replayed:
        requeued += conn.execute(_REQUEUE.format(rows="message_id = ? AND id <= ?"),
                                 (now, message_id, floor, prefix)).rowcount
    return requeued


def park(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    topic: str,
    stream: str,
    stream_entry_id: str,
    payload: bytes,
    attempts: int,
    error: str,
    now: str,
) -> None:
    conn.execute(
        "INSERT INTO forum_parked_messages (message_id, topic, stream, stream_entry_id, payload_json,"
        " attempts, last_error, parked_at, replayed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)"
        " ON CONFLICT(message_id) DO UPDATE SET attempts = excluded.attempts, last_error = excluded.last_error,"
        " parked_at = excluded.parked_at, replayed_at = NULL, stream_entry_id = excluded.stream_entry_id",
        (message_id, topic, stream, stream_entry_id, payload.decode(errors="replace"), attempts, error[:2000], now),
    )
    conn.execute(
        "UPDATE forum_outbox SET status = ?, last_error = ?, updated_at = ? WHERE message_id = ?",
        (OutboxStatus.PARKED.value, error[:500], now, message_id),
    )


def unpark(conn: sqlite3.Connection, message_id: str, now: str) -> tuple[str, bytes] | None:
    """Mark a parked message replayed and return (topic, payload) to publish again."""
    row = conn.execute(
        "SELECT topic, payload_json FROM forum_parked_messages WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE forum_parked_messages SET replayed_at = ? WHERE message_id = ?", (now, message_id))
    conn.execute(
        "UPDATE forum_outbox SET status = 'sent', updated_at = ? WHERE message_id = ? AND status = 'parked'",
        (now, message_id),
    )
    return row[0], row[1].encode()


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ".%"
