"""``ForumReader``: every forum query, bound to one connection the caller owns.

Each method is a one-line call into the module that owns the query, so this class is the
index of the read side: what can be read, with which arguments, and where it lives.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from metawsm.clock import utc_now
from metawsm.forum.reads import control, debug, events, lag, queues, search, stats, threads
from metawsm.forum.reads.filters import DEFAULT_EVENT_LIMIT, DEFAULT_LIMIT, ThreadFilters, Viewer
from metawsm.forum.views import (
    ControlStateView,
    ControlThreadView,
    EventView,
    OutboxMessageView,
    OutboxStats,
    ParkedMessageView,
    StatsRow,
    ThreadDetail,
    ThreadView,
)

Filters = ThreadFilters | Mapping[str, Any] | None


class ForumReader:
    """Read queries over one connection owned by the caller (opens, keeps on its thread, closes).

    Works on a ``read_only`` connection.  Queries that run several statements run them in one
    snapshot, or inside the caller's transaction when one is open.  ``now`` is the clock of
    the outbox's "oldest pending" age.
    """

    def __init__(self, conn: sqlite3.Connection, *, now: Callable[[], datetime] = utc_now) -> None:
        self._conn = conn
        self._now = now

    # -- threads (reads/threads.py, search.py, queues.py) ---------------------------------

    def list_threads(self, filters: Filters = None, viewer: Viewer | None = None, limit: Any = DEFAULT_LIMIT
                     ) -> list[ThreadView]:
        return threads.list_threads(self._conn, filters, viewer, limit)

    def get_thread(self, thread_id: str, viewer: Viewer | None = None) -> ThreadView:
        return threads.get_thread(self._conn, thread_id, viewer)

    def thread_detail(self, thread_id: str, viewer: Viewer | None = None) -> ThreadDetail:
        return threads.thread_detail(self._conn, thread_id, viewer)

    def search(self, query: Any, filters: Filters = None, cursor: str | None = None, limit: Any = DEFAULT_LIMIT,
               viewer: Viewer | None = None) -> tuple[list[ThreadView], str | None]:
        return search.search(self._conn, query, filters, cursor, limit, viewer)

    def queue(self, queue_type: Any, viewer_type: Any, viewer_id: Any, filters: Filters = None,
              cursor: str | None = None, limit: Any = DEFAULT_LIMIT) -> tuple[list[ThreadView], str | None]:
        return queues.queue(self._conn, queue_type, viewer_type, viewer_id, filters, cursor, limit)

    # -- events, stats, control (events.py, stats.py, control.py) ------------------------

    def events_after(self, ticket: str | None = None, run_id: str | None = None, cursor: Any = 0,
                     limit: Any = DEFAULT_EVENT_LIMIT) -> tuple[list[EventView], int]:
        return events.events_after(self._conn, ticket, run_id, cursor, limit)

    def latest_sequence(self) -> int:
        return events.latest_sequence(self._conn)

    def stats(self, ticket: str | None = None, run_id: str | None = None) -> list[StatsRow]:
        return stats.stats(self._conn, ticket, run_id)

    def control_state(self, run_id: str | None = None, agent_name: str | None = None) -> list[ControlStateView]:
        return control.control_state(self._conn, run_id, agent_name)

    def control_threads(self, ticket: str | None = None, run_id: str | None = None) -> list[ControlThreadView]:
        return control.control_threads(self._conn, ticket, run_id)

    # -- pipeline (debug.py, lag.py) -----------------------------------------------------

    def outbox_stats(self) -> OutboxStats:
        return debug.outbox_stats(self._conn, self._now)

    def latest_outbox(self, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
                      ) -> list[OutboxMessageView]:
        return debug.latest_outbox(self._conn, limit, ticket, run_id)

    def parked(self, limit: Any = DEFAULT_LIMIT) -> list[ParkedMessageView]:
        return debug.parked(self._conn, limit)

    def latest_events(self, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
                      ) -> list[EventView]:
        return debug.latest_events(self._conn, limit, ticket, run_id)

    def projection_checkpoints(self) -> dict[str, int]:
        return lag.projection_checkpoints(self._conn)

    def projection_lag(self) -> dict[str, int]:
        return lag.projection_lag(self._conn)
