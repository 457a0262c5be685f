"""A viewer's flags on thread rows, in SQL: ``is_unseen`` and ``is_unanswered``.

* ``is_unseen``: the thread's last event is newer than the viewer's seen marker (0 when
  none) and was not written by that viewer (actor type and name both equal).  The name of
  the last actor is read from ``forum_events`` by ``last_event_sequence`` (its integer
  primary key): the read-model tables do not store it.
* ``is_unanswered``: the ``queue_view`` projection's ``needs_answer`` (the last non-system
  post is by an agent and no human/operator post followed), whatever the thread's state.

A query over thread rows puts :func:`columns` in its SELECT list and :func:`joins` after its
FROM, and :func:`bind` fills the viewer's parameters.  ``source`` is the alias whose
``last_event_sequence`` counts: ``v`` (``forum_thread_views``) or ``q``
(``forum_thread_queue_view``, with ``v`` joined to it).  The joins add ``r`` (the seen
marker), ``e`` (the last event) and, for a ``v`` source, ``q`` (a LEFT JOIN, unless the query
joins ``q`` itself: ``queue_joined``).  Without a viewer both columns are NULL and nothing is
joined.
"""

from __future__ import annotations

from typing import Any

from metawsm.forum.reads.filters import Viewer

UNANSWERED = "COALESCE(q.needs_answer, 0)"


def bind(viewer: Viewer | None, params: dict[str, Any]) -> None:
    if viewer is not None:
        params["viewer_type"] = viewer.viewer_type
        params["viewer_id"] = viewer.viewer_id


def unseen(source: str) -> str:
    """The ``is_unseen`` condition (needs :func:`joins` and :func:`bind`)."""
    return (
        f"({source}.last_event_sequence > COALESCE(r.last_seen_event_sequence, 0)"
        f" AND NOT (COALESCE(e.actor_type, {source}.last_actor_type) = :viewer_type"
        " AND COALESCE(e.actor_name, '') = :viewer_id))"
    )


def columns(source: str, viewer: Viewer | None) -> str:
    """``<expr> AS is_unseen, <expr> AS is_unanswered``."""
    if viewer is None:
        return "NULL AS is_unseen, NULL AS is_unanswered"
    return f"{unseen(source)} AS is_unseen, {UNANSWERED} AS is_unanswered"


def joins(source: str, viewer: Viewer | None, *, queue_joined: bool = False) -> str:
    """The joins :func:`columns` reads from (with a leading space), or ``""``.

    ``queue_joined``: the query already joins ``forum_thread_queue_view q`` on
    ``v.thread_id`` (the unseen queue, driven from ``v``), so it is not joined again.
    """
    if viewer is None:
        return ""
    sql = (
        " LEFT JOIN forum_thread_reads r ON r.thread_id = v.thread_id"
        " AND r.viewer_type = :viewer_type AND r.viewer_id = :viewer_id"
        f" LEFT JOIN forum_events e ON e.sequence = {source}.last_event_sequence"
    )
    if source != "q" and not queue_joined:
        sql += " LEFT JOIN forum_thread_queue_view q ON q.thread_id = v.thread_id"
    return sql
