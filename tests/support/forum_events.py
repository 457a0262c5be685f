"""Build forum events for projection and read tests, and feed them to SQLite like the daemon.

:class:`ForumEvents` makes consistent :class:`EventMessage` streams (sequences, envelopes,
increasing times, the "unchanged" payload fields) while remembering each thread's state,
priority and control threads, so a test only says what happens::

    ev = ForumEvents()
    opened = ev.open(title="Build is red", actor_type="agent", actor_name="alice")
    ev.post(opened.envelope.thread_id, "looking", actor_type="human", actor_name="bob")
    ingest(conn, ev.events)   # log + write model + every projection, one transaction

:func:`apply_all` only applies events to projections (one write transaction, like the
runner); :func:`write_log` appends them to ``forum_events`` and a minimal write model
(``forum_threads``, ``forum_posts``, ``forum_control_threads``) the way the command handler
would; :func:`ingest` does both and advances the projections' checkpoints and ledger.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from metawsm.clock import format_time
from metawsm.forum.messages import (
    ControlSignalled,
    Envelope,
    EventBody,
    EventMessage,
    PostAdded,
    PriorityChanged,
    StateChanged,
    ThreadAssigned,
    ThreadClosed,
    ThreadOpened,
    encode,
)
from metawsm.forum.projections import Projection
from metawsm.forum.projections.registry import all_projections
from metawsm.store.db import write_transaction

BASE_TIME = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class _Thread:
    thread_id: str
    ticket: str
    run_id: str
    agent_name: str
    state: str
    priority: str


class ForumEvents:
    """A deterministic event factory; every made event is also appended to :attr:`events`."""

    def __init__(
        self, *, start_sequence: int = 1, start: datetime = BASE_TIME, step: timedelta = timedelta(seconds=1)
    ) -> None:
        self.sequence = start_sequence - 1
        self.now = start
        self.step = step
        self.events: list[EventMessage] = []
        self.threads: dict[str, _Thread] = {}
        self.control_threads: dict[tuple[str, str], str] = {}
        self._ids = 0
        self._taken = 0

    def take(self) -> list[EventMessage]:
        """The events made since the last ``take()`` (to ingest a history step by step)."""
        fresh = self.events[self._taken :]
        self._taken = len(self.events)
        return fresh

    def _id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_t{self._ids:08d}"

    def _emit(self, thread: _Thread, payload: EventBody, actor_type: str, actor_name: str) -> EventMessage:
        self.sequence += 1
        self.now += self.step
        event_id = self._id("fevt")
        envelope = Envelope(
            event_id=event_id,
            event_type=type(payload).__struct_config__.tag,  # type: ignore[arg-type]  # a struct tag is the event type string
            occurred_at=format_time(self.now),
            thread_id=thread.thread_id,
            run_id=thread.run_id,
            ticket=thread.ticket,
            agent_name=thread.agent_name,
            actor_type=actor_type,
            actor_name=actor_name,
            correlation_id=event_id,
        )
        event = EventMessage(sequence=self.sequence, envelope=envelope, payload=payload)
        self.events.append(event)
        return event

    def thread(self, thread_id: str) -> _Thread:
        return self.threads[thread_id]

    # -- one method per event type -------------------------------------------------------

    def open(
        self,
        title: str = "Build is red",
        body: str = "The deploy fails on main",
        *,
        ticket: str = "T-1",
        run_id: str = "",
        agent_name: str = "",
        priority: str = "normal",
        actor_type: str = "agent",
        actor_name: str = "alice",
        thread_id: str | None = None,
    ) -> EventMessage:
        thread = _Thread(thread_id or self._id("fthr"), ticket, run_id, agent_name, "new", priority)
        self.threads[thread.thread_id] = thread
        payload = ThreadOpened(title=title, body=body, priority=priority, state="new", post_id=self._id("fpst"))
        return self._emit(thread, payload, actor_type, actor_name)

    def post(self, thread_id: str, body: str = "a reply", *, actor_type: str = "human", actor_name: str = "bob") -> EventMessage:
        return self._emit(self.threads[thread_id], PostAdded(post_id=self._id("fpst"), body=body), actor_type, actor_name)

    def assign(
        self, thread_id: str, assignee_name: str = "carol", *, assignee_type: str = "operator",
        actor_type: str = "operator", actor_name: str = "op",
    ) -> EventMessage:
        payload = ThreadAssigned(assignee_type=assignee_type, assignee_name=assignee_name)
        return self._emit(self.threads[thread_id], payload, actor_type, actor_name)

    def change_state(
        self, thread_id: str, to_state: str, *, actor_type: str = "operator", actor_name: str = "op"
    ) -> EventMessage:
        thread = self.threads[thread_id]
        payload = StateChanged(from_state=thread.state, to_state=to_state, priority=thread.priority)
        thread.state = to_state
        return self._emit(thread, payload, actor_type, actor_name)

    def set_priority(
        self, thread_id: str, priority: str, *, actor_type: str = "operator", actor_name: str = "op"
    ) -> EventMessage:
        thread = self.threads[thread_id]
        payload = PriorityChanged(from_priority=thread.priority, to_priority=priority, state=thread.state)
        thread.priority = priority
        return self._emit(thread, payload, actor_type, actor_name)

    def close(self, thread_id: str, *, actor_type: str = "operator", actor_name: str = "op") -> EventMessage:
        thread = self.threads[thread_id]
        payload = ThreadClosed(from_state=thread.state, priority=thread.priority)
        thread.state = "closed"
        return self._emit(thread, payload, actor_type, actor_name)

    def signal(
        self,
        control_type: str,
        *,
        run_id: str = "run_1",
        agent_name: str = "alice",
        ticket: str = "T-1",
        actor_type: str = "agent",
        actor_name: str | None = None,
        **fields: str,
    ) -> EventMessage:
        """A control signal; the first one of a (run, agent) opens its control thread."""
        key = (run_id, agent_name)
        opens = key not in self.control_threads
        if opens:
            thread = _Thread(self._id("fthr"), ticket, run_id, agent_name, "new", "normal")
            self.threads[thread.thread_id] = thread
            self.control_threads[key] = thread.thread_id
        thread = self.threads[self.control_threads[key]]
        body: dict[str, Any] = {
            "schema_version": 1, "control_type": control_type, "run_id": run_id, "agent_name": agent_name, **fields,
        }
        payload = ControlSignalled(
            control_type=control_type,
            payload=body,
            post_id=self._id("fpst"),
            body=encode(body).decode(),
            opens_thread=opens,
            title=f"Control: {agent_name}" if opens else "",
        )
        return self._emit(thread, payload, actor_type, actor_name if actor_name is not None else agent_name)


# -- feeding SQLite --------------------------------------------------------------------------


def apply_all(conn: sqlite3.Connection, projections: Sequence[Projection], events: Iterable[EventMessage]) -> None:
    """Apply every event to every projection, in order, in one write transaction (the runner)."""
    events = list(events)
    with write_transaction(conn):
        for event in events:
            for projection in projections:
                projection.apply(conn, event)


def clear_all(conn: sqlite3.Connection, projections: Sequence[Projection]) -> None:
    with write_transaction(conn):
        for projection in projections:
            projection.clear(conn)


def _write_one(conn: sqlite3.Connection, event: EventMessage) -> None:
    env, payload, seq = event.envelope, event.payload, event.sequence
    conn.execute(
        "INSERT INTO forum_events (sequence, event_id, event_type, event_version, occurred_at, thread_id,"
        " run_id, ticket, agent_name, actor_type, actor_name, correlation_id, causation_id, payload_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seq, env.event_id, env.event_type, env.event_version, env.occurred_at, env.thread_id, env.run_id,
            env.ticket, env.agent_name, env.actor_type, env.actor_name, env.correlation_id, env.causation_id,
            encode(payload).decode(),
        ),
    )
    opens = isinstance(payload, ThreadOpened) or (isinstance(payload, ControlSignalled) and payload.opens_thread)
    if opens:
        assert isinstance(payload, (ThreadOpened, ControlSignalled))
        conn.execute(
            "INSERT INTO forum_threads (thread_id, ticket, run_id, agent_name, title, state, priority,"
            " opened_by_type, opened_by_name, is_control, version, opened_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                env.thread_id, env.ticket, env.run_id, env.agent_name, payload.title, payload.state,
                payload.priority, env.actor_type, env.actor_name, int(isinstance(payload, ControlSignalled)),
                seq, env.occurred_at, env.occurred_at,
            ),
        )
        if isinstance(payload, ControlSignalled):
            conn.execute(
                "INSERT INTO forum_control_threads (run_id, agent_name, thread_id, ticket, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (env.run_id, env.agent_name, env.thread_id, env.ticket, env.occurred_at),
            )
    if isinstance(payload, (ThreadOpened, PostAdded, ControlSignalled)):
        conn.execute(
            "INSERT INTO forum_posts (post_id, thread_id, event_id, author_type, author_name, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (payload.post_id, env.thread_id, env.event_id, env.actor_type, env.actor_name, payload.body, env.occurred_at),
        )
    updates: dict[str, Any] = {}
    if isinstance(payload, ThreadAssigned):
        updates = {"assignee_type": payload.assignee_type, "assignee_name": payload.assignee_name}
    elif isinstance(payload, StateChanged):
        updates = {"state": payload.to_state}
    elif isinstance(payload, PriorityChanged):
        updates = {"priority": payload.to_priority}
    elif isinstance(payload, ThreadClosed):
        updates = {"state": "closed", "closed_at": env.occurred_at}
    updates.update(version=seq, updated_at=env.occurred_at)
    assignments = ", ".join(f"{column} = ?" for column in updates)
    conn.execute(f"UPDATE forum_threads SET {assignments} WHERE thread_id = ?", (*updates.values(), env.thread_id))


def write_log(conn: sqlite3.Connection, events: Iterable[EventMessage]) -> None:
    """Append events to ``forum_events`` and the write model, in one write transaction."""
    with write_transaction(conn):
        for event in events:
            _write_one(conn, event)


def ingest(
    conn: sqlite3.Connection, events: Iterable[EventMessage], projections: Sequence[Projection] | None = None
) -> None:
    """The whole pipeline for ``events`` in one transaction: log, write model, projections,
    ledger rows and checkpoints (default: every projection)."""
    events = list(events)
    projections = list(projections) if projections is not None else all_projections()
    with write_transaction(conn):
        for event in events:
            _write_one(conn, event)
            for projection in projections:
                projection.apply(conn, event)
                conn.execute(
                    "INSERT INTO forum_projection_events (projection_name, event_id, applied_at) VALUES (?, ?, ?)",
                    (projection.name, event.envelope.event_id, event.envelope.occurred_at),
                )
        if events:
            for projection in projections:
                conn.execute(
                    "INSERT INTO forum_projection_checkpoints (projection_name, last_sequence, updated_at)"
                    " VALUES (?, ?, ?) ON CONFLICT (projection_name) DO UPDATE SET"
                    " last_sequence = excluded.last_sequence, updated_at = excluded.updated_at",
                    (projection.name, events[-1].sequence, events[-1].envelope.occurred_at),
                )
