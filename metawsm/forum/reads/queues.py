"""A viewer's queues: ``unseen`` and ``unanswered`` threads, keyset-paginated.

``unseen`` holds the threads whose ``is_unseen`` flag is set for the viewer, ``unanswered``
those whose ``needs_answer`` is (see :mod:`metawsm.forum.reads.flags`).  Closed threads are
in neither queue, and a thread is in a queue only once both ``forum_thread_views`` and
``forum_thread_queue_view`` hold it (an inner join).  Both return ``forum_thread_views`` rows.

* ``unseen`` filters, pages and orders on ``forum_thread_views`` (``v``) and walks its
  ``(updated_at, thread_id)``, ``(ticket, ...)`` or ``(run_id, ...)`` index, as the thread list
  does; ``q`` is joined per row for ``is_unanswered``.  ``forum_thread_queue_view`` has no
  full list indexes of its own since migration 14.
* ``unanswered`` filters, pages and orders on ``forum_thread_queue_view`` (``q``) and walks its
  partial index ``ix_forum_thread_queue_view_unanswered`` (migration 13): the set is small, so
  a ticket or run filter just filters that walk.

Both projections stamp ``updated_at`` (and ``state``, ``last_event_sequence``) from the same
events, so either alias gives the same order and cursors.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from metawsm.forum.enums import QueueType
from metawsm.forum.reads import flags
from metawsm.forum.reads.db import rows, snapshot
from metawsm.forum.reads.filters import DEFAULT_LIMIT, ThreadFilters, Viewer, enum_filter, invalid_filter, parse_limit
from metawsm.forum.reads.paging import after_cursor, page
from metawsm.forum.views import ThreadView


def queue(
    conn: sqlite3.Connection,
    queue_type: Any,
    viewer_type: Any,
    viewer_id: Any,
    filters: ThreadFilters | Mapping[str, Any] | None = None,
    cursor: str | None = None,
    limit: Any = DEFAULT_LIMIT,
) -> tuple[list[ThreadView], str | None]:
    """The viewer's ``unseen`` or ``unanswered`` queue (closed threads excluded)."""
    kind = enum_filter(QueueType, queue_type, "type")
    if kind is None:
        raise invalid_filter(f"type is required: one of {', '.join(q.value for q in QueueType)}")
    viewer = Viewer.parse(viewer_type, viewer_id, required=True)
    assert viewer is not None
    parsed = ThreadFilters.parse(filters)
    count = parse_limit(limit, DEFAULT_LIMIT)
    params: dict[str, Any] = {"limit": count + 1}
    flags.bind(viewer, params)
    if kind == QueueType.UNSEEN.value:
        # driven from v and the thread list's indexes, flags as in the list (threads.py); q is
        # joined per row by its primary key (inner: the thread must be in both projections)
        source, condition = "v", flags.unseen("v")
        tables = "forum_thread_views v JOIN forum_thread_queue_view q ON q.thread_id = v.thread_id"
    else:
        # "q.needs_answer = 1" verbatim: the condition of the partial index the unanswered queue
        # walks (ix_forum_thread_queue_view_unanswered, migration 13)
        source, condition = "q", "q.needs_answer = 1"
        tables = "forum_thread_queue_view q JOIN forum_thread_views v ON v.thread_id = q.thread_id"
    where = [
        f"{source}.state != 'closed'", *parsed.where(source, params), *after_cursor(source, cursor, params),
        condition,
    ]
    sql = (
        f"SELECT v.*, {source}.updated_at AS cursor_updated_at, {source}.thread_id AS cursor_thread_id,"
        f" {flags.columns(source, viewer)} FROM {tables}{flags.joins(source, viewer, queue_joined=True)}"
        f" WHERE {' AND '.join(where)}"
        f" ORDER BY {source}.updated_at DESC, {source}.thread_id DESC LIMIT :limit"
    )
    with snapshot(conn):
        found = rows(conn, sql, params)
    return page(found, count, True)
