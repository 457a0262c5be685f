"""Threads: the list, one thread, and one thread with its posts and events.

Lists read only the ``thread_views`` read model.  :func:`get_thread` and
:func:`thread_detail` prefer it too, but a thread that exists only in the write model (its
projection is lagging or being rebuilt) is built from ``forum_threads``, ``forum_posts`` and
``forum_events``, viewer flags included, so :class:`ThreadNotFound` means the thread really
is unknown.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from metawsm.forum.errors import ThreadNotFound
from metawsm.forum.reads import flags
from metawsm.forum.reads.db import one, rows, snapshot
from metawsm.forum.reads.filters import DEFAULT_LIMIT, ThreadFilters, Viewer, parse_limit
from metawsm.forum.reads.rows import EVENT_COLUMNS, as_text, event_view, post_view, thread_header, thread_view
from metawsm.forum.views import ThreadDetail, ThreadView


def list_threads(
    conn: sqlite3.Connection,
    filters: ThreadFilters | Mapping[str, Any] | None = None,
    viewer: Viewer | None = None,
    limit: Any = DEFAULT_LIMIT,
) -> list[ThreadView]:
    """Threads matching ``filters``, newest update first (``limit`` 1..500)."""
    parsed = ThreadFilters.parse(filters)
    params: dict[str, Any] = {"limit": parse_limit(limit, DEFAULT_LIMIT)}
    flags.bind(viewer, params)
    where = parsed.where("v", params)
    sql = (
        f"SELECT v.*, {flags.columns('v', viewer)} FROM forum_thread_views v{flags.joins('v', viewer)}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :limit"
    )
    with snapshot(conn):
        found = rows(conn, sql, params)
    return [thread_view(r, viewer is not None) for r in found]


def get_thread(conn: sqlite3.Connection, thread_id: str, viewer: Viewer | None = None) -> ThreadView:
    """One thread; :class:`ThreadNotFound` when neither projected nor in the write model."""
    with snapshot(conn):
        view = _projected(conn, thread_id, viewer) or _from_write_model(conn, thread_id, viewer)
    if view is None:
        raise ThreadNotFound(thread_id)
    return view


def thread_detail(conn: sqlite3.Connection, thread_id: str, viewer: Viewer | None = None) -> ThreadDetail:
    """Thread view + posts (oldest first) + the thread's events (sequence order)."""
    with snapshot(conn):
        view = _projected(conn, thread_id, viewer) or _from_write_model(conn, thread_id, viewer)
        if view is None:
            raise ThreadNotFound(thread_id)
        posts = rows(conn, "SELECT * FROM forum_posts WHERE thread_id = ? ORDER BY created_at, post_id", (thread_id,))
        events = rows(
            conn, f"SELECT {EVENT_COLUMNS} FROM forum_events WHERE thread_id = ? ORDER BY sequence", (thread_id,)
        )
    return ThreadDetail(thread=view, posts=[post_view(p) for p in posts], events=[event_view(e) for e in events])


def _projected(conn: sqlite3.Connection, thread_id: str, viewer: Viewer | None) -> ThreadView | None:
    params: dict[str, Any] = {"thread_id": thread_id}
    flags.bind(viewer, params)
    row = one(
        conn,
        f"SELECT v.*, {flags.columns('v', viewer)} FROM forum_thread_views v{flags.joins('v', viewer)}"
        " WHERE v.thread_id = :thread_id",
        params,
    )
    return thread_view(row, viewer is not None) if row is not None else None


def _from_write_model(conn: sqlite3.Connection, thread_id: str, viewer: Viewer | None) -> ThreadView | None:
    """The view of a thread the projection has not caught up with, from the write model."""
    thread = one(conn, "SELECT * FROM forum_threads WHERE thread_id = ?", (thread_id,))
    if thread is None:
        return None
    posts = rows(
        conn,
        "SELECT author_type, author_name, created_at FROM forum_posts WHERE thread_id = ?"
        " ORDER BY created_at, post_id",
        (thread_id,),
    )
    last_event = one(
        conn,
        "SELECT sequence, actor_type, actor_name FROM forum_events WHERE thread_id = ?"
        " ORDER BY sequence DESC LIMIT 1",
        (thread_id,),
    )
    last_post = posts[-1] if posts else None
    sequence = int(last_event["sequence"]) if last_event is not None else int(thread["version"] or 0)
    view = ThreadView(
        **thread_header(thread),
        posts_count=len(posts),
        last_post_at=last_post["created_at"] if last_post is not None else None,
        last_post_by_type=as_text(last_post["author_type"]) if last_post is not None else "",
        last_post_by_name=as_text(last_post["author_name"]) if last_post is not None else "",
        last_event_sequence=sequence,
        last_actor_type=as_text(last_event["actor_type"]) if last_event is not None else "",
    )
    if viewer is not None:
        marker = one(
            conn,
            "SELECT last_seen_event_sequence FROM forum_thread_reads"
            " WHERE thread_id = ? AND viewer_type = ? AND viewer_id = ?",
            (thread_id, viewer.viewer_type, viewer.viewer_id),
        )
        seen = int(marker[0]) if marker is not None else 0
        by_viewer = last_event is not None and (
            last_event["actor_type"] == viewer.viewer_type and as_text(last_event["actor_name"]) == viewer.viewer_id
        )
        needs_answer = False
        for post in posts:
            if post["author_type"] == "agent":
                needs_answer = True
            elif post["author_type"] in ("human", "operator"):
                needs_answer = False
        view.is_unseen = sequence > seen and not by_viewer
        view.is_unanswered = needs_answer
    return view
