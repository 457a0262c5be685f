"""``thread_views``: one row per thread in ``forum_thread_views`` plus the full-text index.

``forum_search`` (FTS5) holds one row per post: ``thread_id``, ``post_id``, ``title``,
``body``.  The thread's title is indexed once, on the row of its first post (the opening
post, or the first signal of a control thread); later posts have an empty title.  The row's
rowid says whose post it is (migration 12): the thread's ``search_key`` in
``forum_search_threads`` (the sequence of the event of its first post) shifted left by 24,
plus the post's number in the thread from 1 (``posts_count`` after this post).

Every applied event stamps ``last_event_sequence``, ``last_actor_type`` and ``updated_at``
(the envelope's ``occurred_at``).  The name of the last actor is not stored here: the
reader looks it up in ``forum_events`` by ``last_event_sequence`` (its primary key).
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

from metawsm.forum.messages import (
    ControlSignalled,
    EventMessage,
    PostAdded,
    PriorityChanged,
    StateChanged,
    ThreadAssigned,
    ThreadClosed,
    ThreadOpened,
)
from metawsm.store.schema_forum import SEARCH_MAX_POSTS, SEARCH_POST_BITS

_INSERT_VIEW = """
INSERT INTO forum_thread_views (
    thread_id, ticket, run_id, agent_name, title, state, priority,
    opened_by_type, opened_by_name, is_control, posts_count,
    last_event_sequence, last_actor_type, opened_at, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)
"""


class ThreadViewsProjection:
    name: ClassVar[str] = "thread_views"

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        env = event.envelope
        payload = event.payload
        if isinstance(payload, ThreadOpened):
            self._open(conn, event, payload.title, payload.state, payload.priority, payload.is_control)
            self._post(conn, event, payload.post_id, payload.body, title=payload.title)
        elif isinstance(payload, PostAdded):
            self._post(conn, event, payload.post_id, payload.body)
        elif isinstance(payload, ThreadAssigned):
            conn.execute(
                "UPDATE forum_thread_views SET assignee_type = ?, assignee_name = ? WHERE thread_id = ?",
                (payload.assignee_type, payload.assignee_name, env.thread_id),
            )
        elif isinstance(payload, StateChanged):
            conn.execute(
                "UPDATE forum_thread_views SET state = ?,"
                " closed_at = CASE WHEN ? = 'closed' THEN COALESCE(closed_at, ?) ELSE closed_at END"
                " WHERE thread_id = ?",
                (payload.to_state, payload.to_state, env.occurred_at, env.thread_id),
            )
        elif isinstance(payload, PriorityChanged):
            conn.execute(
                "UPDATE forum_thread_views SET priority = ? WHERE thread_id = ?",
                (payload.to_priority, env.thread_id),
            )
        elif isinstance(payload, ThreadClosed):
            conn.execute(
                "UPDATE forum_thread_views SET state = 'closed', closed_at = COALESCE(closed_at, ?)"
                " WHERE thread_id = ?",
                (env.occurred_at, env.thread_id),
            )
        elif isinstance(payload, ControlSignalled):
            title = ""
            if payload.opens_thread:
                self._open(conn, event, payload.title, payload.state, payload.priority, True)
                title = payload.title
            self._post(conn, event, payload.post_id, payload.body, title=title)
        else:  # an event type this projection does not know: nothing of ours to change
            return
        conn.execute(
            "UPDATE forum_thread_views SET last_event_sequence = ?, last_actor_type = ?, updated_at = ?"
            " WHERE thread_id = ?",
            (event.sequence, env.actor_type, env.occurred_at, env.thread_id),
        )

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM forum_thread_views")
        conn.execute("DELETE FROM forum_search")
        conn.execute("DELETE FROM forum_search_threads")

    @staticmethod
    def _open(
        conn: sqlite3.Connection, event: EventMessage, title: str, state: str, priority: str, is_control: bool
    ) -> None:
        env = event.envelope
        conn.execute(
            _INSERT_VIEW,
            (
                env.thread_id, env.ticket, env.run_id or "", env.agent_name or "", title, state,
                priority, env.actor_type, env.actor_name or "", 1 if is_control else 0,
                event.sequence, env.actor_type, env.occurred_at, env.occurred_at,
            ),
        )

    @staticmethod
    def _post(conn: sqlite3.Connection, event: EventMessage, post_id: str, body: str, title: str = "") -> None:
        env = event.envelope
        conn.execute(
            "UPDATE forum_thread_views SET posts_count = posts_count + 1, last_post_at = ?,"
            " last_post_by_type = ?, last_post_by_name = ? WHERE thread_id = ?",
            (env.occurred_at, env.actor_type, env.actor_name or "", env.thread_id),
        )
        conn.execute(
            "INSERT INTO forum_search_threads (search_key, thread_id) VALUES (?, ?)"
            " ON CONFLICT (thread_id) DO NOTHING",
            (event.sequence, env.thread_id),
        )
        conn.execute(
            "INSERT INTO forum_search (rowid, thread_id, post_id, title, body)"
            f" SELECT (k.search_key << {SEARCH_POST_BITS}) + v.posts_count, ?, ?, ?, ?"
            " FROM forum_search_threads k JOIN forum_thread_views v ON v.thread_id = k.thread_id"
            f" WHERE k.thread_id = ? AND v.posts_count <= {SEARCH_MAX_POSTS}",
            (env.thread_id, post_id, title, body, env.thread_id),
        )
