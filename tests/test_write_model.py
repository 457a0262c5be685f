"""The write model's low gear: ``check`` and ``apply_command`` per command and per refusal, against
a real migrated SQLite file, without Redis or actors.

Requests go through the intake's pure half (``commands.plan``), so the messages are the ones
the pipeline would carry; ``check`` is what the intake asks before enqueuing, ``apply_command``
what the command handler does inside its transaction.  tests/test_pipeline_commands.py drives
the same commands through the whole pipeline.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from metawsm.clock import now_text
from metawsm.forum import commands, registry
from metawsm.forum.commands import PlannedWrite
from metawsm.forum.enums import ThreadState
from metawsm.forum.errors import ForumError, for_command
from metawsm.forum.messages import CommandMessage, EventMessage
from metawsm.forum.projections.registry import all_projections
from metawsm.forum.projections.thread_views import ThreadViewsProjection
from metawsm.forum.requests import (
    AddPostRequest,
    AnswerRequest,
    AssignRequest,
    ChangeStateRequest,
    CloseRequest,
    ControlSignalRequest,
    OpenThreadRequest,
    SetPriorityRequest,
)
from metawsm.forum.rules import ALLOWED_TRANSITIONS
from metawsm.forum.topics import Topics
from metawsm.forum.write_model import (
    EVENT_COLUMNS,
    CommandOutcome,
    apply_command,
    check,
    event_from_row,
    recorded_outcomes,
)
from metawsm.store import Database, open_connection, write_transaction
from support.forum_events import apply_all

TOPICS = Topics()


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    Database(db_path).migrate()
    connection = open_connection(db_path)
    try:
        yield connection
    finally:
        connection.close()


@dataclass
class Result:
    planned: PlannedWrite
    outcomes: list[CommandOutcome]
    events: list[EventMessage]

    @property
    def thread_id(self) -> str:
        return self.outcomes[-1].thread_id


def apply(conn: sqlite3.Connection, request: Any, thread_id: str = "", actor_type: str = "human") -> Result:
    """Plan a request and apply its commands like the handler: one write transaction each."""
    planned = commands.plan(request, thread_id, actor_type)
    outcomes, events = [], []
    for message in planned.commands:
        with write_transaction(conn):
            outcome, event = apply_command(conn, message, TOPICS, now_text())
        outcomes.append(outcome)
        if event is not None:
            events.append(event)
    return Result(planned, outcomes, events)


def opened(conn: sqlite3.Connection, **fields: Any) -> str:
    fields = {"ticket": "T-1", "title": "Question", "body": "Need guidance", "actor_type": "agent", **fields}
    result = apply(conn, OpenThreadRequest(**fields))
    assert [o.status for o in result.outcomes] == ["applied"]
    return result.thread_id


def moved_to(conn: sqlite3.Connection, state: str, **fields: Any) -> str:
    thread_id = opened(conn, **fields)
    if state != "new":
        assert apply(conn, ChangeStateRequest(to_state=state), thread_id).outcomes[0].status == "applied"
    return thread_id


def one(conn: sqlite3.Connection, sql: str, *params: Any) -> dict[str, Any]:
    rows = [dict(r) for r in conn.execute(sql, params).fetchall()]
    assert len(rows) == 1, rows
    return rows[0]


def count(conn: sqlite3.Connection, table: str, where: str = "1", *params: Any) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", params).fetchone()[0])


def logged(conn: sqlite3.Connection) -> list[EventMessage]:
    return [event_from_row(r) for r in conn.execute(f"SELECT {EVENT_COLUMNS} FROM forum_events ORDER BY sequence")]


def assert_applied(conn: sqlite3.Connection, result: Result, *event_types: str) -> None:
    """Applied with exactly these events: logged, enqueued to their topics, recorded as verdicts."""
    assert [o.status for o in result.outcomes] == ["applied"] * len(event_types), result.outcomes
    assert [e.envelope.event_type for e in result.events] == list(event_types)
    assert [o.sequence for o in result.outcomes] == [e.sequence for e in result.events]
    log = logged(conn)
    assert log[-len(event_types):] == result.events  # what was appended is what was returned
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))  # gap-free
    for event in result.events:
        row = one(conn, "SELECT topic, payload_json FROM forum_outbox WHERE topic = ? AND message_key = ?"
                  " ORDER BY id DESC LIMIT 1", TOPICS.event(event.envelope.event_type), event.envelope.thread_id)
        assert json.loads(row["payload_json"])["envelope"]["event_id"] == event.envelope.event_id
        verdict = one(conn, "SELECT status, sequence FROM forum_command_results WHERE event_id = ?",
                      event.envelope.event_id)
        assert verdict == {"status": "applied", "sequence": event.sequence}
        thread = one(conn, "SELECT version FROM forum_threads WHERE thread_id = ?", event.envelope.thread_id)
        assert thread["version"] >= event.sequence


def thread(conn: sqlite3.Connection, thread_id: str) -> dict[str, Any]:
    return one(conn, "SELECT * FROM forum_threads WHERE thread_id = ?", thread_id)


# -- happy paths, one per command -----------------------------------------------------------------


def test_open_thread_creates_the_thread_and_its_first_post(conn: sqlite3.Connection) -> None:
    result = apply(conn, OpenThreadRequest(ticket="T-1", title="Build is red", body="CI fails", priority="high",
                                           run_id="run-1", agent_name="alice", actor_type="agent",
                                           actor_name="alice"))
    assert_applied(conn, result, "forum.thread.opened")
    tid = result.thread_id
    row = thread(conn, tid)
    assert (row["ticket"], row["run_id"], row["agent_name"], row["title"], row["state"], row["priority"]) == (
        "T-1", "run-1", "alice", "Build is red", "new", "high")
    assert (row["opened_by_type"], row["opened_by_name"], row["is_control"]) == ("agent", "alice", 0)
    post = one(conn, "SELECT body, author_type, event_id FROM forum_posts WHERE thread_id = ?", tid)
    assert post == {"body": "CI fails", "author_type": "agent", "event_id": result.events[0].envelope.event_id}
    payload = result.events[0].payload
    assert (payload.title, payload.state, payload.priority, payload.post_id) == (
        "Build is red", "new", "high", result.planned.commands[0].command.post_id)


def test_opening_the_same_id_with_the_same_content_is_a_no_op(conn: sqlite3.Connection) -> None:
    request = OpenThreadRequest(thread_id="ext-1", ticket="T-1", title="t", body="b", actor_type="agent")
    apply(conn, request)
    planned = commands.plan(request)
    assert check(conn, planned.commands[0]).thread_id == "ext-1"  # the intake answers with the thread
    retry = apply(conn, request)
    assert [o.status for o in retry.outcomes] == ["unchanged"] and not retry.events
    assert count(conn, "forum_events") == 1


def test_add_post_appends_a_post(conn: sqlite3.Connection) -> None:
    tid = opened(conn, run_id="run-9", agent_name="alice")
    result = apply(conn, AddPostRequest(body="more detail", actor_type="agent", actor_name="bot"), tid)
    assert_applied(conn, result, "forum.post.added")
    assert count(conn, "forum_posts", "thread_id = ?", tid) == 2
    # A command addressed to a thread carries the thread's context in its event.
    envelope = result.events[0].envelope
    assert (envelope.ticket, envelope.run_id, envelope.agent_name) == ("T-1", "run-9", "alice")


def test_answer_is_a_post_then_the_state_answered(conn: sqlite3.Connection) -> None:
    tid = opened(conn)
    result = apply(conn, AnswerRequest(body="Proceed", actor_type="operator", actor_name="olga"), tid)
    assert_applied(conn, result, "forum.post.added", "forum.state.changed")
    post, state = (e.envelope for e in result.events)
    assert state.correlation_id == post.correlation_id == post.event_id and state.causation_id == post.event_id
    assert thread(conn, tid)["state"] == "answered"
    topics = [r[0] for r in conn.execute("SELECT topic FROM forum_outbox WHERE topic LIKE 'forum.integration.%'")]
    assert topics == [TOPICS.integration("docs_sync_requested")]


def test_assign_thread_records_the_assignment(conn: sqlite3.Connection) -> None:
    tid = opened(conn)
    result = apply(conn, AssignRequest(assignee_type="operator", assignee_name="olga", assignment_note="yours"), tid)
    assert_applied(conn, result, "forum.assigned")
    row = thread(conn, tid)
    assert (row["assignee_type"], row["assignee_name"]) == ("operator", "olga")
    assignment = one(conn, "SELECT assignee_name, assignment_note, event_id FROM forum_assignments WHERE thread_id = ?",
                     tid)
    assert assignment == {"assignee_name": "olga", "assignment_note": "yours",
                          "event_id": result.events[0].envelope.event_id}


def test_change_state_moves_the_thread_and_records_the_transition(conn: sqlite3.Connection) -> None:
    tid = opened(conn, priority="urgent")
    result = apply(conn, ChangeStateRequest(to_state="triaged"), tid)
    assert_applied(conn, result, "forum.state.changed")
    payload = result.events[0].payload
    assert (payload.from_state, payload.to_state, payload.priority) == ("new", "triaged", "urgent")
    assert thread(conn, tid)["state"] == "triaged"
    transition = one(conn, "SELECT from_state, to_state FROM forum_state_transitions WHERE thread_id = ?", tid)
    assert transition == {"from_state": "new", "to_state": "triaged"}


def test_change_state_to_closed_is_a_close(conn: sqlite3.Connection) -> None:
    tid = opened(conn)
    result = apply(conn, ChangeStateRequest(to_state="closed"), tid)
    assert_applied(conn, result, "forum.thread.closed")
    row = thread(conn, tid)
    assert row["state"] == "closed" and row["closed_at"] == result.events[0].envelope.occurred_at


def test_set_priority_changes_the_priority(conn: sqlite3.Connection) -> None:
    tid = moved_to(conn, "triaged")
    result = apply(conn, SetPriorityRequest(priority="urgent"), tid)
    assert_applied(conn, result, "forum.priority.changed")
    payload = result.events[0].payload
    assert (payload.from_priority, payload.to_priority, payload.state) == ("normal", "urgent", "triaged")
    assert thread(conn, tid)["priority"] == "urgent"


def test_close_thread_closes_it(conn: sqlite3.Connection) -> None:
    tid = moved_to(conn, "answered")
    result = apply(conn, CloseRequest(actor_type="operator"), tid)
    assert_applied(conn, result, "forum.thread.closed")
    assert (result.events[0].payload.from_state, thread(conn, tid)["state"]) == ("answered", "closed")
    assert one(conn, "SELECT from_state, to_state FROM forum_state_transitions WHERE to_state = 'closed'") == {
        "from_state": "answered", "to_state": "closed"}


def test_control_signals_share_one_control_thread_per_run_and_agent(conn: sqlite3.Connection) -> None:
    def signal(payload: dict[str, Any], agent: str = "alice") -> Result:
        return apply(conn, ControlSignalRequest(run_id="run-1", ticket="T-1", agent_name=agent,
                                                payload={"schema_version": 1, **payload}), actor_type="operator")

    first = signal({"control_type": "guidance_request", "question": "Which DB?"})
    assert_applied(conn, first, "forum.control.signal")
    assert first.events[0].payload.opens_thread and first.events[0].payload.title == "Control: alice"
    control = one(conn, "SELECT thread_id FROM forum_control_threads WHERE run_id = 'run-1' AND agent_name = 'alice'")
    assert control["thread_id"] == first.thread_id and thread(conn, first.thread_id)["is_control"] == 1

    second = signal({"control_type": "completion", "summary": "done"})
    assert_applied(conn, second, "forum.control.signal")
    assert second.thread_id == first.thread_id != second.planned.thread_id  # planned id unused
    assert not second.events[0].payload.opens_thread
    assert count(conn, "forum_posts", "thread_id = ?", first.thread_id) == 2

    other = signal({"control_type": "completion"}, agent="bob")
    assert other.thread_id != first.thread_id


# One request per write (registry.WRITES): a write without one fails the test below, naming it.
SAMPLES: dict[str, Callable[[], Any]] = {
    "open_thread": lambda: OpenThreadRequest(ticket="T-2", title="Another", body="b"),
    "add_post": lambda: AddPostRequest(body="more"),
    "answer": lambda: AnswerRequest(body="Proceed"),
    "assign_thread": lambda: AssignRequest(assignee_type="human", assignee_name="bob"),
    "change_state": lambda: ChangeStateRequest(to_state="waiting_human"),
    "set_priority": lambda: SetPriorityRequest(priority="low"),
    "close_thread": lambda: CloseRequest(),
    "control_signal": lambda: ControlSignalRequest(run_id="run-1", ticket="T-1", agent_name="alice",
                                                   payload={"schema_version": 1, "control_type": "completion"}),
}


@pytest.mark.parametrize("write", registry.WRITES, ids=[w.name for w in registry.WRITES])
def test_every_write_produces_its_registered_events_and_thread_views_shows_them(
    conn: sqlite3.Connection, write: registry.WriteSpec
) -> None:
    make = SAMPLES.get(write.name)
    assert make is not None, f"tests/test_write_model.py SAMPLES has no sample request for the write {write.name}"
    tid = opened(conn)
    apply_all(conn, all_projections(), logged(conn))
    request = make()
    assert isinstance(request, write.request)
    result = apply(conn, request, "" if write.name in ("open_thread", "control_signal") else tid)
    assert [o.command for o in result.outcomes] == [c.name for c in write.commands]
    assert_applied(conn, result, *(c.event_type for c in write.commands))
    for event, command in zip(result.events, write.commands):
        assert type(event.payload) in command.events
    apply_all(conn, all_projections(), result.events)  # every projection takes the new events
    view = one(conn, "SELECT last_event_sequence FROM forum_thread_views WHERE thread_id = ?", result.thread_id)
    assert view["last_event_sequence"] == result.events[-1].sequence, (
        f"{ThreadViewsProjection.__name__} ignores {result.events[-1].envelope.event_type}: the writer's view "
        "would not show the write"
    )



# -- accepted no-ops and redelivery --------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "request_"),
    [
        ("triaged", ChangeStateRequest(to_state="triaged")),
        ("closed", ChangeStateRequest(to_state="closed")),
        ("closed", CloseRequest()),
        ("new", SetPriorityRequest(priority="normal")),
    ],
    ids=["same-state", "closed-to-closed", "close-closed", "same-priority"],
)
def test_no_op_commands_are_unchanged_with_the_threads_last_sequence(
    conn: sqlite3.Connection, state: str, request_: Any
) -> None:
    tid = moved_to(conn, state)
    before = count(conn, "forum_events")
    result = apply(conn, request_, tid)
    assert [o.status for o in result.outcomes] == ["unchanged"] and not result.events
    assert result.outcomes[0].sequence == thread(conn, tid)["version"] == before
    assert count(conn, "forum_events") == before


def test_a_redelivered_command_is_decided_once(conn: sqlite3.Connection) -> None:
    tid = opened(conn)
    planned = commands.plan(AddPostRequest(body="once"), tid)
    with write_transaction(conn):
        first, event = apply_command(conn, planned.commands[0], TOPICS, now_text())
    with write_transaction(conn):
        again, repeat = apply_command(conn, planned.commands[0], TOPICS, now_text())
    assert event is not None and repeat is None
    assert again == first
    assert count(conn, "forum_posts", "thread_id = ?", tid) == 2


# -- refusals, one per code ----------------------------------------------------------------------


def intake_refusal(conn: sqlite3.Connection, request: Any, thread_id: str) -> ForumError:
    """What the intake answers: ``check`` on the first command, re-coded for the write."""
    planned = commands.plan(request, thread_id)
    with pytest.raises(ForumError) as caught:
        check(conn, planned.commands[0])
    return for_command(caught.value, registry.write_of(request).name)


def handler_refusal(conn: sqlite3.Connection, message: CommandMessage) -> CommandOutcome:
    """What the command handler records, checked against the verdict read back from SQLite."""
    events = count(conn, "forum_events")
    with write_transaction(conn):
        outcome, event = apply_command(conn, message, TOPICS, now_text())
    assert outcome.status == "rejected" and event is None
    assert count(conn, "forum_events") == events  # a refusal leaves no event
    assert recorded_outcomes(conn, [message.envelope.event_id]) == [outcome]  # same status after the round trip
    return outcome


def refused(conn: sqlite3.Connection, request: Any, thread_id: str) -> tuple[str, str, int]:
    """The refusal, the same from the intake and from the handler: (code, message, status)."""
    error = intake_refusal(conn, request, thread_id)
    outcome = handler_refusal(conn, commands.plan(request, thread_id).commands[0])
    assert (outcome.error_code, outcome.error_message, outcome.error_status) == (error.code, error.message,
                                                                                   error.status)
    return error.code, error.message, error.status


@pytest.mark.parametrize(
    "request_",
    [AddPostRequest(body="x"), AnswerRequest(body="x"), AssignRequest(assignee_type="operator", assignee_name="o"),
     ChangeStateRequest(to_state="triaged"), SetPriorityRequest(priority="high"), CloseRequest()],
    ids=lambda r: type(r).__name__,
)
def test_forum_thread_not_found(conn: sqlite3.Connection, request_: Any) -> None:
    assert refused(conn, request_, "fthr_nope") == ("forum_thread_not_found", "forum thread fthr_nope not found", 404)


def test_conflict(conn: sqlite3.Connection) -> None:
    apply(conn, OpenThreadRequest(thread_id="ext-1", ticket="T-1", title="t", body="b"))
    request = OpenThreadRequest(thread_id="ext-1", ticket="T-1", title="t", body="other")
    assert refused(conn, request, "") == ("conflict", "forum thread ext-1 already exists with different content", 409)


def test_forum_add_post_failed(conn: sqlite3.Connection) -> None:
    tid = moved_to(conn, "closed")
    closed = f"forum thread {tid} is closed"
    assert refused(conn, AddPostRequest(body="late"), tid) == ("forum_add_post_failed", closed, 400)
    assert refused(conn, AnswerRequest(body="late"), tid) == ("forum_add_post_failed", closed, 400)


def test_forum_assign_failed(conn: sqlite3.Connection) -> None:
    tid = moved_to(conn, "closed")
    request = AssignRequest(assignee_type="operator", assignee_name="olga")
    assert refused(conn, request, tid) == ("forum_assign_failed", f"forum thread {tid} is closed", 400)


REFUSED_TRANSITIONS = [(src.value, dst.value) for src in ThreadState for dst in ThreadState
                       if src != dst and dst not in ALLOWED_TRANSITIONS[src]]


@pytest.mark.parametrize(("src", "dst"), REFUSED_TRANSITIONS, ids=[f"{s}-{d}" for s, d in REFUSED_TRANSITIONS])
def test_forum_state_failed(conn: sqlite3.Connection, src: str, dst: str) -> None:
    tid = moved_to(conn, src)
    assert refused(conn, ChangeStateRequest(to_state=dst), tid) == (
        "forum_state_failed", f"forum state transition {src} -> {dst} is not allowed", 400)


def test_forum_priority_failed(conn: sqlite3.Connection) -> None:
    tid = moved_to(conn, "closed")
    assert refused(conn, SetPriorityRequest(priority="low"), tid) == (
        "forum_priority_failed", f"forum thread {tid} is closed", 400)


def test_the_second_half_of_an_answer_is_refused_by_the_state_machine(conn: sqlite3.Connection) -> None:
    """The handler decides each command of an answer on its own: a thread closed after the intake
    accepted the answer refuses the post and then the move to answered."""
    tid = opened(conn)
    planned = commands.plan(AnswerRequest(body="too late"), tid)
    apply(conn, CloseRequest(), tid)
    post = handler_refusal(conn, planned.commands[0])
    state = handler_refusal(conn, planned.commands[1])
    assert (post.error_code, post.error_message) == ("forum_add_post_failed", f"forum thread {tid} is closed")
    assert (state.error_code, state.error_message) == (
        "forum_state_failed", "forum state transition closed -> answered is not allowed")


# Refusals of input that does not depend on state: the intake's pure half (commands.plan).
PLAN_REFUSALS = [
    ("forum_open_failed", lambda: OpenThreadRequest(ticket="T", title=" ", body="b"), "",
     "forum thread title is required"),
    ("forum_open_failed", lambda: OpenThreadRequest(ticket="T", title="t", body="b", thread_id="a b"), "",
     "forum thread_id may only contain letters, digits and _ . : - (max 128)"),
    ("forum_add_post_failed", lambda: AddPostRequest(body=""), "fthr_1", "forum post body is required"),
    ("forum_add_post_failed", lambda: AnswerRequest(body="x"), " ", "forum thread_id is required"),
    ("forum_assign_failed", lambda: AssignRequest(assignee_type="robot", assignee_name="x"), "fthr_1",
     'invalid assignee_type "robot": must be one of agent, operator, human, system'),
    ("forum_state_failed", lambda: ChangeStateRequest(to_state="done"), "fthr_1",
     'invalid state "done": must be one of new, triaged, waiting_operator, waiting_human, answered, closed'),
    ("forum_priority_failed", lambda: SetPriorityRequest(priority="p0"), "fthr_1",
     'invalid priority "p0": must be one of low, normal, high, urgent'),
    ("forum_close_failed", lambda: CloseRequest(actor_type="cat"), "fthr_1",
     'invalid actor_type "cat": must be one of agent, operator, human, system'),
    ("forum_control_signal_failed",
     lambda: ControlSignalRequest(run_id="r", ticket="T", agent_name="a",
                                  payload={"schema_version": 1, "control_type": "guidance_request"}), "",
     "forum control guidance_request requires question"),
]


@pytest.mark.parametrize(("code", "make", "thread_id", "message"), PLAN_REFUSALS,
                         ids=[f"{c}-{i}" for i, (c, *_rest) in enumerate(PLAN_REFUSALS)])
def test_plan_refusals_carry_the_writes_failure_code(code: str, make: Callable[[], Any], thread_id: str,
                                                    message: str) -> None:
    with pytest.raises(ForumError) as caught:
        commands.plan(make(), thread_id)
    assert (caught.value.code, caught.value.message, caught.value.status) == (code, message, 400)


def test_every_failure_code_has_a_refusal_test() -> None:
    tested = {code for code, *_ in PLAN_REFUSALS}
    missing = sorted({w.failure_code for w in registry.WRITES} - tested)
    assert not missing, f"tests/test_write_model.py PLAN_REFUSALS has no case for {missing}"
