"""A viewer's queues: ``unseen`` and ``unanswered`` threads, keyset-paginated.

``unseen`` holds the threads whose ``is_unseen`` flag is set for the viewer, ``unanswered``
those whose ``needs_answer`` is (see :mod:`metawsm.forum.reads.flags`).  Closed threads are
in neither queue.  Queues filter and paginate on ``forum_thread_queue_view`` and return the
matching ``forum_thread_views`` rows.
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
    where = ["q.state != 'closed'", *parsed.where("q", params), *after_cursor("q", cursor, params)]
    # "q.needs_answer = 1" verbatim: the condition of the partial index the unanswered queue
    # walks (ix_forum_thread_queue_view_unanswered, migration 13)
    where.append(flags.unseen("q") if kind == QueueType.UNSEEN.value else "q.needs_answer = 1")
    sql = (
        f"SELECT v.*, q.updated_at AS cursor_updated_at, q.thread_id AS cursor_thread_id, {flags.columns('q', viewer)}"
        " FROM forum_thread_queue_view q JOIN forum_thread_views v ON v.thread_id = q.thread_id"
        f"{flags.joins('q', viewer)}"
        f" WHERE {' AND '.join(where)}"
        " ORDER BY q.updated_at DESC, q.thread_id DESC LIMIT :limit"
    )
    with snapshot(conn):
        found = rows(conn, sql, params)
    return page(found, count, True)
