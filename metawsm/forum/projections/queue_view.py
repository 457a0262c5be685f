"""``queue_view``: per-thread facts the unseen/unanswered queues filter on.

``needs_answer`` is 1 when the last non-system post of the thread was written by an agent
and no human/operator post followed it.  Posts are the opening body (``thread.opened``),
``post.added`` and control-signal posts; a post by ``system`` leaves the flag unchanged.

The queues also need the last actor's *name* (a viewer's own writes do not make a thread
unseen for them); the reader looks it up in ``forum_events`` by ``last_event_sequence``.
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

_ANSWERING = ("human", "operator")


def _needs_answer_after_post(author_type: str) -> int | None:
    """The flag after a post by ``author_type``; None = unchanged (system posts)."""
    if author_type == "agent":
        return 1
    if author_type in _ANSWERING:
        return 0
    return None


class QueueViewProjection:
    name: ClassVar[str] = "queue_view"

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        env = event.envelope
        payload = event.payload
        thread_id = env.thread_id
        if isinstance(payload, (ThreadOpened, ControlSignalled)):
            opens = isinstance(payload, ThreadOpened) or payload.opens_thread
            if opens:
                conn.execute(
                    "INSERT INTO forum_thread_queue_view (thread_id, ticket, run_id, agent_name,"
                    " state, priority, needs_answer, updated_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
                    (
                        thread_id, env.ticket, env.run_id or "", env.agent_name or "",
                        payload.state, payload.priority, env.occurred_at,
                    ),
                )
            self._post(conn, thread_id, env.actor_type)
        elif isinstance(payload, PostAdded):
            self._post(conn, thread_id, env.actor_type)
        elif isinstance(payload, ThreadAssigned):
            conn.execute(
                "UPDATE forum_thread_queue_view SET assignee_name = ? WHERE thread_id = ?",
                (payload.assignee_name, thread_id),
            )
        elif isinstance(payload, StateChanged):
            conn.execute(
                "UPDATE forum_thread_queue_view SET state = ? WHERE thread_id = ?",
                (payload.to_state, thread_id),
            )
        elif isinstance(payload, PriorityChanged):
            conn.execute(
                "UPDATE forum_thread_queue_view SET priority = ? WHERE thread_id = ?",
                (payload.to_priority, thread_id),
            )
        elif isinstance(payload, ThreadClosed):
            conn.execute(
                "UPDATE forum_thread_queue_view SET state = 'closed' WHERE thread_id = ?", (thread_id,)
            )
        else:
            return
        conn.execute(
            "UPDATE forum_thread_queue_view SET last_event_sequence = ?, last_actor_type = ?,"
            " updated_at = ? WHERE thread_id = ?",
            (event.sequence, env.actor_type, env.occurred_at, thread_id),
        )

    def clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM forum_thread_queue_view")

    @staticmethod
    def _post(conn: sqlite3.Connection, thread_id: str, author_type: str) -> None:
        flag = _needs_answer_after_post(author_type)
        if flag is not None:
            conn.execute(
                "UPDATE forum_thread_queue_view SET needs_answer = ? WHERE thread_id = ?", (flag, thread_id)
            )
