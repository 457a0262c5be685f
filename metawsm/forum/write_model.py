"""Apply forum commands to the authoritative tables (the write model).

Both the intake (a quick check against possibly stale state, so most refusals reach the
caller synchronously) and the command handler (the authoritative check, inside the write
transaction) use :func:`check`; only the handler calls :func:`apply_command`.

What differs per command is one :class:`Handler` (its check and its effect) in ``HANDLERS``,
keyed by command body and checked against :mod:`metawsm.forum.registry` on import.

Every applied command appends exactly one row to ``forum_events`` and enqueues that event
to the outbox in the caller's transaction.  A command whose verdict is already recorded in
``forum_command_results`` is a no-op, which makes stream redelivery harmless.  A refusal is
recorded as its code and message; its HTTP status comes back from the code through
:func:`metawsm.forum.errors.status_of` (the error classes' own table), so a verdict read from
SQLite reports the status the refusal was raised with.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from metawsm.forum import outbox, registry, rules
from metawsm.forum.errors import ForumError, ThreadConflict, ThreadNotFound, for_command, status_of
from metawsm.forum.messages import (
    AddPost,
    AssignThread,
    ChangeState,
    CloseThread,
    CommandMessage,
    ControlSignal,
    ControlSignalled,
    Envelope,
    EventMessage,
    OpenThread,
    PostAdded,
    PriorityChanged,
    SetPriority,
    StateChanged,
    ThreadAssigned,
    ThreadClosed,
    ThreadOpened,
    encode,
)
from metawsm.forum.topics import Topics
from metawsm.store.schema_forum import next_event_sequence


class Thread(msgspec.Struct, frozen=True):
    """The write-model row the rules need."""

    thread_id: str
    ticket: str
    run_id: str
    agent_name: str
    state: str
    priority: str
    content_hash: str
    is_control: bool


class CommandOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """The handler's verdict on one command, as told to the caller waiting for it."""

    event_id: str
    command: str
    thread_id: str
    status: str  # applied | unchanged | rejected
    sequence: int | None = None
    error_code: str = ""
    error_message: str = ""
    error_status: int = 0


def load_thread(conn: sqlite3.Connection, thread_id: str) -> Thread | None:
    row = conn.execute(
        "SELECT thread_id, ticket, run_id, agent_name, state, priority, content_hash, is_control"
        " FROM forum_threads WHERE thread_id = ?",
        (thread_id,),
    ).fetchone()
    if row is None:
        return None
    return Thread(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))


def control_thread_id(conn: sqlite3.Connection, run_id: str, agent_name: str) -> str | None:
    row = conn.execute(
        "SELECT thread_id FROM forum_control_threads WHERE run_id = ? AND agent_name = ?", (run_id, agent_name)
    ).fetchone()
    return None if row is None else row[0]


def open_content_hash(envelope: Envelope, command: OpenThread) -> str:
    return rules.content_hash(
        {
            "ticket": envelope.ticket,
            "run_id": envelope.run_id,
            "agent_name": envelope.agent_name,
            "title": command.title,
            "body": command.body,
            "priority": command.priority,
            "actor_type": envelope.actor_type,
            "actor_name": envelope.actor_name,
        }
    )


def check(conn: sqlite3.Connection, message: CommandMessage) -> Thread | None:
    """Refuse the command if current state forbids it; return the thread it targets.

    For ``open_thread`` returns the existing thread when the same id was opened with the
    same content (an idempotent retry), and None for a new thread; ``control_signal`` finds
    its thread when it applies, so it is never refused here and returns None.
    """
    return HANDLERS[type(message.command)].check(conn, message.envelope, message.command)


def apply_command(
    conn: sqlite3.Connection, message: CommandMessage, topics: Topics, now: str
) -> tuple[CommandOutcome, EventMessage | None]:
    """Apply one command inside the caller's write transaction."""
    envelope = message.envelope
    name = message.name
    decided = _recorded_outcome(conn, envelope.event_id)
    if decided is not None:
        return decided, None
    try:
        handler = HANDLERS[type(message.command)]
        thread = handler.check(conn, envelope, message.command)
        if handler.addressed and thread is not None:
            # Commands addressed to a thread carry its context, whatever the caller sent.
            envelope = msgspec.structs.replace(
                envelope, ticket=thread.ticket, run_id=thread.run_id, agent_name=thread.agent_name
            )
        produced = handler.produce(conn, envelope, message.command, thread)
    except ForumError as refusal:
        error = for_command(refusal, name)
        outcome = CommandOutcome(
            event_id=envelope.event_id,
            command=name,
            thread_id=envelope.thread_id,
            status="rejected",
            error_code=error.code,
            error_message=error.message,
            error_status=error.status,
        )
        _record(conn, outcome, now)
        return outcome, None
    if produced is None:
        # ``sequence`` is the thread's last event: the verdict is only news to the caller once
        # the read side shows that much (an answer's post, say, applied just before its no-op
        # state change), so the caller waits for thread_views to reach it.
        version = conn.execute(
            "SELECT version FROM forum_threads WHERE thread_id = ?", (envelope.thread_id,)
        ).fetchone()
        outcome = CommandOutcome(
            event_id=envelope.event_id,
            command=name,
            thread_id=envelope.thread_id,
            status="unchanged",
            sequence=int(version[0]) if version is not None and version[0] else None,
        )
        _record(conn, outcome, now)
        return outcome, None
    event_envelope, payload = produced
    sequence = next_event_sequence(conn)
    event = EventMessage(sequence=sequence, envelope=event_envelope, payload=payload)
    _append_event(conn, event)
    conn.execute(
        "UPDATE forum_threads SET version = ?, updated_at = ? WHERE thread_id = ?",
        (sequence, event_envelope.occurred_at, event_envelope.thread_id),
    )
    outbox.enqueue(conn, topics.event(event_envelope.event_type), event_envelope.thread_id, encode(event), now)
    if isinstance(payload, StateChanged) and payload.to_state == "answered":
        integration = {"thread_id": event_envelope.thread_id, "ticket": event_envelope.ticket,
                       "run_id": event_envelope.run_id, "event_id": event_envelope.event_id}
        outbox.enqueue(conn, topics.integration("docs_sync_requested"), event_envelope.thread_id,
                       encode(integration), now)
    outcome = CommandOutcome(
        event_id=envelope.event_id,
        command=name,
        thread_id=event_envelope.thread_id,
        status="applied",
        sequence=sequence,
    )
    _record(conn, outcome, now)
    return outcome, event


# -- per-command checks and effects ---------------------------------------------------------------

Produced = tuple[Envelope, Any]  # the event's envelope and payload


@dataclass(frozen=True)
class Handler:
    """What the write model does with one kind of command (``HANDLERS``, checked on import).

    ``check`` refuses what current state forbids and returns the thread the command targets;
    ``produce`` applies it to the write-model tables and returns the event, or None for an
    accepted no-op.  ``addressed``: the command targets an existing thread, whose ticket, run
    and agent its event carries whatever the caller sent.
    """

    check: Callable[[sqlite3.Connection, Envelope, Any], Thread | None]
    produce: Callable[[sqlite3.Connection, Envelope, Any, Any], Produced | None]
    addressed: bool = True


def _existing(conn: sqlite3.Connection, envelope: Envelope, _command: Any = None) -> Thread:
    thread = load_thread(conn, envelope.thread_id)
    if thread is None:
        raise ThreadNotFound(envelope.thread_id)
    return thread


def _writable(conn: sqlite3.Connection, envelope: Envelope, _command: Any = None) -> Thread:
    """An existing thread that is not closed."""
    thread = _existing(conn, envelope)
    if thread.state == "closed":
        raise rules.closed_error(thread.thread_id)
    return thread


def _check_open_thread(conn: sqlite3.Connection, envelope: Envelope, command: OpenThread) -> Thread | None:
    thread = load_thread(conn, envelope.thread_id)
    if thread is not None and thread.content_hash != open_content_hash(envelope, command):
        raise ThreadConflict(f"forum thread {thread.thread_id} already exists with different content")
    return thread


def _check_change_state(conn: sqlite3.Connection, envelope: Envelope, command: ChangeState) -> Thread:
    thread = _existing(conn, envelope)
    rules.check_transition(thread.state, command.to_state)
    return thread


def _no_thread(_conn: sqlite3.Connection, _envelope: Envelope, _command: Any) -> None:
    return None


def _open_thread(conn: sqlite3.Connection, envelope: Envelope, command: OpenThread, thread: Thread | None
                 ) -> Produced | None:
    if thread is not None:
        return None  # same id, same content: the retry changes nothing
    at = envelope.occurred_at
    conn.execute(
        "INSERT INTO forum_threads (thread_id, ticket, run_id, agent_name, title, state, priority,"
        " opened_by_type, opened_by_name, is_control, content_hash, version, opened_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, 'new', ?, ?, ?, 0, ?, 0, ?, ?)",
        (envelope.thread_id, envelope.ticket, envelope.run_id, envelope.agent_name, command.title,
         command.priority, envelope.actor_type, envelope.actor_name,
         open_content_hash(envelope, command), at, at),
    )
    _insert_post(conn, command.post_id, envelope, command.body)
    return envelope, ThreadOpened(
        title=command.title, body=command.body, priority=command.priority, state="new", post_id=command.post_id
    )


def _add_post(conn: sqlite3.Connection, envelope: Envelope, command: AddPost, _thread: Thread) -> Produced:
    _insert_post(conn, command.post_id, envelope, command.body)
    return envelope, PostAdded(post_id=command.post_id, body=command.body)


def _assign(conn: sqlite3.Connection, envelope: Envelope, command: AssignThread, thread: Thread) -> Produced:
    conn.execute(
        "INSERT INTO forum_assignments (thread_id, event_id, assignee_type, assignee_name, assignment_note,"
        " assigned_by_type, assigned_by_name, assigned_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (thread.thread_id, envelope.event_id, command.assignee_type, command.assignee_name,
         command.assignment_note, envelope.actor_type, envelope.actor_name, envelope.occurred_at),
    )
    conn.execute(
        "UPDATE forum_threads SET assignee_type = ?, assignee_name = ? WHERE thread_id = ?",
        (command.assignee_type, command.assignee_name, thread.thread_id),
    )
    return envelope, ThreadAssigned(
        assignee_type=command.assignee_type,
        assignee_name=command.assignee_name,
        assignment_note=command.assignment_note,
    )


def _change_state(conn: sqlite3.Connection, envelope: Envelope, command: ChangeState, thread: Thread
                  ) -> Produced | None:
    if command.to_state == thread.state:
        return None
    if command.to_state == "closed":
        return _close(conn, envelope, thread)
    _transition(conn, envelope, thread, command.to_state)
    return envelope, StateChanged(from_state=thread.state, to_state=command.to_state, priority=thread.priority)


def _set_priority(conn: sqlite3.Connection, envelope: Envelope, command: SetPriority, thread: Thread
                  ) -> Produced | None:
    if command.priority == thread.priority:
        return None
    conn.execute("UPDATE forum_threads SET priority = ? WHERE thread_id = ?", (command.priority, thread.thread_id))
    return envelope, PriorityChanged(from_priority=thread.priority, to_priority=command.priority, state=thread.state)


def _close_thread(conn: sqlite3.Connection, envelope: Envelope, _command: CloseThread, thread: Thread
                  ) -> Produced | None:
    if thread.state == "closed":
        return None  # closing a closed thread is an accepted no-op
    return _close(conn, envelope, thread)


def _close(conn: sqlite3.Connection, envelope: Envelope, thread: Thread) -> tuple[Envelope, ThreadClosed]:
    _transition(conn, envelope, thread, "closed")
    conn.execute("UPDATE forum_threads SET closed_at = ? WHERE thread_id = ?", (envelope.occurred_at, thread.thread_id))
    closed = msgspec.structs.replace(envelope, event_type="forum.thread.closed")
    return closed, ThreadClosed(from_state=thread.state, priority=thread.priority)


def _transition(conn: sqlite3.Connection, envelope: Envelope, thread: Thread, to_state: str) -> None:
    conn.execute(
        "INSERT INTO forum_state_transitions (thread_id, event_id, from_state, to_state, actor_type, actor_name,"
        " changed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (thread.thread_id, envelope.event_id, thread.state, to_state, envelope.actor_type, envelope.actor_name,
         envelope.occurred_at),
    )
    conn.execute("UPDATE forum_threads SET state = ? WHERE thread_id = ?", (to_state, thread.thread_id))


def _control_signal(
    conn: sqlite3.Connection, envelope: Envelope, command: ControlSignal, _thread: None
) -> tuple[Envelope, ControlSignalled]:
    run_id, agent_name = envelope.run_id, envelope.agent_name
    existing = control_thread_id(conn, run_id, agent_name)
    title = rules.control_thread_title(agent_name)
    opens = existing is None
    if existing is None:
        thread_id = envelope.thread_id
        conn.execute(
            "INSERT INTO forum_threads (thread_id, ticket, run_id, agent_name, title, state, priority,"
            " opened_by_type, opened_by_name, is_control, content_hash, version, opened_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, 'new', 'normal', ?, ?, 1, '', 0, ?, ?)",
            (thread_id, envelope.ticket, run_id, agent_name, title, envelope.actor_type, envelope.actor_name,
             envelope.occurred_at, envelope.occurred_at),
        )
        conn.execute(
            "INSERT INTO forum_control_threads (run_id, agent_name, thread_id, ticket, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (run_id, agent_name, thread_id, envelope.ticket, envelope.occurred_at),
        )
    else:
        thread_id = existing  # a concurrent first signal created it meanwhile
        envelope = msgspec.structs.replace(envelope, thread_id=thread_id)
    body = encode(command.payload).decode()
    _insert_post(conn, command.post_id, envelope, body)
    return envelope, ControlSignalled(
        control_type=command.control_type,
        payload=command.payload,
        post_id=command.post_id,
        body=body,
        opens_thread=opens,
        title=title if opens else "",
    )


def _insert_post(conn: sqlite3.Connection, post_id: str, envelope: Envelope, body: str) -> None:
    conn.execute(
        "INSERT INTO forum_posts (post_id, thread_id, event_id, author_type, author_name, body, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (post_id, envelope.thread_id, envelope.event_id, envelope.actor_type, envelope.actor_name, body,
         envelope.occurred_at),
    )


# One handler per command body (registry.COMMANDS), checked on import.
HANDLERS: dict[type, Handler] = {
    OpenThread: Handler(_check_open_thread, _open_thread, addressed=False),
    AddPost: Handler(_writable, _add_post),
    AssignThread: Handler(_writable, _assign),
    ChangeState: Handler(_check_change_state, _change_state),  # the state machine decides
    SetPriority: Handler(_writable, _set_priority),
    CloseThread: Handler(_existing, _close_thread),  # closing a closed thread is a no-op
    ControlSignal: Handler(_no_thread, _control_signal, addressed=False),  # finds its thread when applied
}
registry.require_all("metawsm/forum/write_model.py HANDLERS", HANDLERS, (c.body for c in registry.COMMANDS),
                     "command body")


def _append_event(conn: sqlite3.Connection, event: EventMessage) -> None:
    e = event.envelope
    conn.execute(
        "INSERT INTO forum_events (sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id,"
        " ticket, agent_name, actor_type, actor_name, correlation_id, causation_id, payload_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.sequence, e.event_id, e.event_type, e.event_version, e.occurred_at, e.thread_id, e.run_id, e.ticket,
         e.agent_name, e.actor_type, e.actor_name, e.correlation_id or e.event_id, e.causation_id,
         encode(event.payload).decode()),
    )


_OUTCOME_COLUMNS = "event_id, command_type, thread_id, status, sequence, error_code, error_message"


def _outcome_from_row(row: Any) -> CommandOutcome:
    status = row[3]
    return CommandOutcome(
        event_id=row[0],
        command=row[1],
        thread_id=row[2] or "",
        status=status,
        sequence=row[4],
        error_code=row[5] or "",
        error_message=row[6] or "",
        error_status=status_of(row[5] or "") if status == "rejected" else 0,
    )


def _recorded_outcome(conn: sqlite3.Connection, event_id: str) -> CommandOutcome | None:
    row = conn.execute(
        f"SELECT {_OUTCOME_COLUMNS} FROM forum_command_results WHERE event_id = ?", (event_id,)
    ).fetchone()
    return None if row is None else _outcome_from_row(row)


def recorded_outcomes(conn: sqlite3.Connection, event_ids: list[str]) -> list[CommandOutcome]:
    """The recorded verdicts among ``event_ids`` (any status), for waiters that missed them."""
    outcomes: list[CommandOutcome] = []
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start:start + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT {_OUTCOME_COLUMNS} FROM forum_command_results WHERE event_id IN ({marks})", chunk)
        outcomes.extend(_outcome_from_row(row) for row in rows)
    return outcomes


def _record(conn: sqlite3.Connection, outcome: CommandOutcome, now: str) -> None:
    conn.execute(
        "INSERT INTO forum_command_results (event_id, command_type, thread_id, status, error_code, error_message,"
        " sequence, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (outcome.event_id, outcome.command, outcome.thread_id, outcome.status, outcome.error_code,
         outcome.error_message, outcome.sequence, now),
    )


def event_from_row(row: sqlite3.Row | tuple[Any, ...]) -> EventMessage:
    """Rebuild an EventMessage from a ``forum_events`` row (sequence, event_id, ..., payload_json)."""
    from metawsm.forum.messages import decode_event_body

    (sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id, ticket, agent_name,
     actor_type, actor_name, correlation_id, causation_id, payload_json) = tuple(row)
    envelope = Envelope(
        event_id=event_id, event_type=event_type, event_version=event_version, occurred_at=occurred_at,
        thread_id=thread_id or "", run_id=run_id or "", ticket=ticket or "", agent_name=agent_name or "",
        actor_type=actor_type, actor_name=actor_name or "", correlation_id=correlation_id or "",
        causation_id=causation_id or "",
    )
    # payload_json is the tagged union encoding, so it decodes straight back.
    return EventMessage(sequence=sequence, envelope=envelope, payload=decode_event_body(payload_json))


EVENT_COLUMNS = (
    "sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id, ticket, agent_name,"
    " actor_type, actor_name, correlation_id, causation_id, payload_json"
)

