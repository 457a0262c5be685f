"""Keyset pagination of thread lists (search and queues), newest update first.

The order is ``(updated_at, thread_id)`` descending, and a cursor (opaque, see
:mod:`metawsm.forum.cursor`) names the last row of the previous page.  A query fetches
``limit + 1`` rows and selects its keyset columns as ``cursor_updated_at`` and
``cursor_thread_id``; :func:`page` cuts the extra row off and turns it into "more follow".
``next_cursor`` is None on the last page.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from metawsm.forum.cursor import decode_thread_cursor, encode_thread_cursor
from metawsm.forum.reads.rows import thread_view
from metawsm.forum.views import ThreadView


def after_cursor(alias: str, cursor: str | None, params: dict[str, Any]) -> list[str]:
    """The condition "older than the cursor's row" on ``alias`` (none without a cursor)."""
    if cursor is None or cursor == "":
        return []
    updated_at, thread_id = decode_thread_cursor(cursor)
    params["cursor_updated_at"] = updated_at
    params["cursor_thread_id"] = thread_id
    return [f"({alias}.updated_at, {alias}.thread_id) < (:cursor_updated_at, :cursor_thread_id)"]


def page(found: list[sqlite3.Row], limit: int, with_flags: bool) -> tuple[list[ThreadView], str | None]:
    """Rows fetched with ``LIMIT limit + 1``: the page and the cursor of its last row when more follow."""
    more = len(found) > limit
    found = found[:limit]
    next_cursor = None
    if more and found:
        last = found[-1]
        next_cursor = encode_thread_cursor(last["cursor_updated_at"], last["cursor_thread_id"])
    return [thread_view(r, with_flags) for r in found], next_cursor
