"""The forum's query side: threads, search, queues, events, stats, control and pipeline views.

:class:`ForumReader` (``reader.py``) binds every query to one ``sqlite3`` connection the
caller owns; each query lives in the module of its concern:

============  ==============================================================================
``threads``   the thread list, one thread, a thread with posts and events (write-model
              fallback while ``thread_views`` lags)
``search``    full-text search (FTS5, user syntax matched as text)
``queues``    a viewer's ``unseen`` and ``unanswered`` queues
``events``    the event log after a cursor; the latest sequence
``stats``     thread counts per ticket, run, state and priority
``control``   control state per (run, agent); control threads
``debug``     outbox counts and rows, parked entries, newest events
``lag``       projection checkpoints and lag
============  ==============================================================================

Shared pieces: ``filters`` (input validation: :class:`ThreadFilters`, :class:`Viewer`,
limits), ``flags`` (the viewer's ``is_unseen``/``is_unanswered`` in SQL), ``paging``
(keyset cursors), ``rows`` (rows to views) and ``db`` (running statements, snapshots).
Everything here reads, and works on a ``read_only`` connection; the one forum write that is
not an event, the seen marker, is :mod:`metawsm.forum.seen`.
"""

from __future__ import annotations

from metawsm.forum.reads.filters import (
    DEFAULT_EVENT_LIMIT,
    DEFAULT_LIMIT,
    MAX_EVENT_LIMIT,
    MAX_LIMIT,
    ThreadFilters,
    Viewer,
)
from metawsm.forum.reads.reader import ForumReader
from metawsm.forum.reads.search import MAX_SEARCH_TERMS

__all__ = [
    "DEFAULT_EVENT_LIMIT",
    "DEFAULT_LIMIT",
    "MAX_EVENT_LIMIT",
    "MAX_LIMIT",
    "MAX_SEARCH_TERMS",
    "ForumReader",
    "ThreadFilters",
    "Viewer",
]
