"""``thread_stats``: thread counts per (ticket, run_id, state, priority) in ``forum_thread_stats``.

Opening a thread (or the first signal of a control thread) adds one to its key; a state
change, priority change or close moves one thread from the old key to the new one.  The
event payloads carry the unchanged field (``StateChanged.priority``,
``PriorityChanged.state``, ``ThreadClosed.priority``) exactly so that this projection needs
no per-thread state.  A row whose count reaches 0 is deleted, so the table only lists keys
that have threads.
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

from metawsm.forum.messages import (
    ControlSignalled,
    EventMessage,
    PriorityChanged,
    StateChanged,
    ThreadClosed,
    ThreadOpened,
)

Key = tuple[str, str, str, str]  # ticket, run_id, state, priority


class ThreadStatsProjection:
    name: ClassVar[str] = "thread_stats"

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        env = event.envelope
        payload = event.payload
        ticket, run_id = env.ticket, env.run_id or ""
        if isinstance(payload, ThreadOpened):
            self._add(conn, (ticket, run_id, payload.state, payload.priority), +1)
        elif isinstance(payload, ControlSignalled):
            if payload.opens_thread:
                self._add(conn, (ticket, run_id, payload.state, payload.priority), +1)
        elif isinstance(payload, StateChanged):
            self._move(
                conn,
                (ticket, run_id, payload.from_state, payload.priority),
                (ticket, run_id, payload.to_state, payload.priority),
            )
        elif isinstance(payload, PriorityChanged):
            self._move(
                conn,
                (ticket, run_id, payload.state, payload.from_priority),
                (ticket, run_id, payload.state, payload.to_priority),
            )
        elif isinstance(payload, ThreadClosed):
            self._move(
                conn,
                (ticket, run_id, payload.from_state, payload.priority),
                (ticket, run_id, "closed", payload.priority),
            )

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM forum_thread_stats")

    def _move(self, conn: sqlite3.Connection, old: Key, new: Key) -> None:
        if old == new:  # same-state change, closing a closed thread: nothing moves
            return
        self._add(conn, old, -1)
        self._add(conn, new, +1)

    @staticmethod
    def _add(conn: sqlite3.Connection, key: Key, delta: int) -> None:
        conn.execute(
            "INSERT INTO forum_thread_stats (ticket, run_id, state, priority, thread_count)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (ticket, run_id, state, priority)"
            " DO UPDATE SET thread_count = thread_count + excluded.thread_count",
            (*key, delta),
        )
        if delta < 0:
            conn.execute(
                "DELETE FROM forum_thread_stats"
                " WHERE ticket = ? AND run_id = ? AND state = ? AND priority = ? AND thread_count <= 0",
                key,
            )
