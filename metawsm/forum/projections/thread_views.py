"""``thread_views``: one row per thread in ``forum_thread_views`` plus the full-text index.

``forum_search`` (FTS5) indexes one row per post: ``title`` and ``body``.  The thread's title
is indexed once, on the row of its first post (the opening post, or the first signal of a
control thread); later posts have an empty title.  The row's rowid says whose post it is
(migration 12): the thread's ``search_key`` in ``forum_search_threads`` (the sequence of the
event of its first post) shifted left by 24, plus the post's number in the thread from 1
(``posts_count`` after this post).  Since migration 13 the table is contentless (it stores no
copy of the text): rows are only ever inserted, a rebuild empties it with FTS5's
``'delete-all'`` command (a contentless table takes no ``DELETE``), and should a row ever have
to go, FTS5's ``'delete'`` command needs its rowid and its original title and body (from
``forum_threads``/``forum_posts``).  It cannot be scanned: :func:`search_row_count` counts its
rows and :func:`search_tokens` shows what each row indexed.

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


def search_row_count(conn: sqlite3.Connection) -> int:
    """How many rows ``forum_search`` holds (posts indexed), without scanning it (it cannot be).

    FTS5 keeps the total in its "averages" record (``forum_search_data``, id 1): a varint, the
    row count, before the per-column token totals.  No record (a new or just cleared index) is 0.
    """
    row = conn.execute("SELECT block FROM forum_search_data WHERE id = 1").fetchone()
    block = bytes(row[0]) if row is not None and row[0] is not None else b""
    total = 0
    for i, byte in enumerate(block[:9]):  # SQLite's varint: 7 bits a byte, the 9th byte 8 bits
        if i == 8:
            return (total << 8) | byte
        total = (total << 7) | (byte & 0x7F)
        if byte < 0x80:
            return total
    return total


def search_tokens(conn: sqlite3.Connection) -> dict[int, tuple[str, str]]:
    """What ``forum_search`` indexed, by rowid: the title's and the body's tokens, as the tokenizer
    folded them, joined by spaces (rows without any token are absent).

    The text itself is not stored (contentless); this reads FTS5's own vocabulary of the whole
    index (an ``fts5vocab`` table in ``temp``, dropped after), for tests and inspection only; a
    ``read_only`` connection (``query_only``) refuses to create it.
    """
    conn.execute("DROP TABLE IF EXISTS temp.forum_search_instances")
    conn.execute("CREATE VIRTUAL TABLE temp.forum_search_instances USING fts5vocab(main, forum_search, instance)")
    found: dict[int, tuple[list[str], list[str]]] = {}
    try:
        for doc, column, term in conn.execute(
            "SELECT doc, col, term FROM temp.forum_search_instances ORDER BY doc, col, offset"
        ):
            found.setdefault(int(doc), ([], []))[0 if column == "title" else 1].append(str(term))
    finally:
        conn.execute("DROP TABLE temp.forum_search_instances")
    return {doc: (" ".join(title), " ".join(body)) for doc, (title, body) in found.items()}


class ThreadViewsProjection:
    name: ClassVar[str] = "thread_views"

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        env = event.envelope
        payload = event.payload
        if isinstance(payload, ThreadOpened):
            self._open(conn, event, payload.title, payload.state, payload.priority, payload.is_control)
            self._post(conn, event, payload.body, title=payload.title)
        elif isinstance(payload, PostAdded):
            self._post(conn, event, payload.body)
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
            self._post(conn, event, payload.body, title=title)
        else:  # an event type this projection does not know: nothing of ours to change
            return
        conn.execute(
            "UPDATE forum_thread_views SET last_event_sequence = ?, last_actor_type = ?, updated_at = ?"
            " WHERE thread_id = ?",
            (event.sequence, env.actor_type, env.occurred_at, env.thread_id),
        )

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM forum_thread_views")
        conn.execute("INSERT INTO forum_search (forum_search) VALUES ('delete-all')")  # contentless
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
    def _post(conn: sqlite3.Connection, event: EventMessage, body: str, title: str = "") -> None:
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
            "INSERT INTO forum_search (rowid, title, body)"
            f" SELECT (k.search_key << {SEARCH_POST_BITS}) + v.posts_count, ?, ?"
            " FROM forum_search_threads k JOIN forum_thread_views v ON v.thread_id = k.thread_id"
            f" WHERE k.thread_id = ? AND v.posts_count <= {SEARCH_MAX_POSTS}",
            (title, body, env.thread_id),
        )
