"""Every forum command and every refusal, through the real pipeline.

Writes go through ``ForumService.submit_sync`` (intake → outbox → relay → Redis → consumer →
handler → relay → Redis → consumer → projections → broker → OutcomeBoard), against the session
Redis and a real SQLite file.  The runbook's SQL is run verbatim on the database the pipeline
wrote, with Python's sqlite3 and with the ``sqlite3`` command-line shell.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
from typing import Any

import pytest

from metawsm.forum.enums import ThreadState
from metawsm.forum.errors import ForumError
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
from metawsm.waiting import wait_until


def db(daemon: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(str(daemon.services.db.path))
    conn.row_factory = sqlite3.Row
    return conn


def ask(forum: Any, **fields: Any) -> Any:
    fields.setdefault("ticket", "T-1")
    fields.setdefault("title", "Question")
    fields.setdefault("body", "Need guidance")
    fields.setdefault("actor_type", "agent")
    result = forum.submit_sync(OpenThreadRequest(**fields))
    assert result.status == "applied"
    return result


def refused(call: Any) -> ForumError:
    with pytest.raises(ForumError) as info:
        call()
    return info.value


def signal(forum: Any, payload: dict[str, Any], run_id: str = "run-1", agent: str = "alice") -> Any:
    return forum.submit_sync(
        ControlSignalRequest(run_id=run_id, ticket="T-1", agent_name=agent, payload=payload, actor_type="agent")
    )


# -- happy paths ----------------------------------------------------------------------------


def test_every_command_applies_and_is_visible_on_return(forum_daemon):
    forum = forum_daemon.forum
    opened = ask(forum, title="Build is red", body="CI fails on main", actor_name="bot", run_id="run-9")
    tid = opened.thread_id
    assert tid.startswith("fthr_")
    view = opened.thread
    assert (view.state, view.priority, view.posts_count, view.ticket, view.run_id) == ("new", "normal", 1, "T-1", "run-9")
    assert view.opened_by_type == "agent" and view.opened_by_name == "bot"

    posted = forum.submit_sync(AddPostRequest(body="more detail", actor_type="agent", actor_name="bot"), thread_id=tid)
    assert posted.status == "applied" and posted.thread.posts_count == 2
    assert posted.thread.last_post_by_name == "bot"

    assigned = forum.submit_sync(
        AssignRequest(assignee_type="operator", assignee_name="olga", assignment_note="take it"), thread_id=tid
    )
    assert (assigned.thread.assignee_type, assigned.thread.assignee_name) == ("operator", "olga")

    triaged = forum.submit_sync(ChangeStateRequest(to_state="triaged"), thread_id=tid)
    assert triaged.thread.state == "triaged"
    waiting = forum.submit_sync(ChangeStateRequest(to_state="waiting_operator"), thread_id=tid)
    assert waiting.thread.state == "waiting_operator"

    urgent = forum.submit_sync(SetPriorityRequest(priority="urgent"), thread_id=tid)
    assert urgent.thread.priority == "urgent"

    answered = forum.submit_sync(AnswerRequest(body="Rerun with cache off", actor_type="operator"), thread_id=tid)
    assert answered.thread.state == "answered" and answered.thread.posts_count == 3

    closed = forum.submit_sync(CloseRequest(actor_type="operator"), thread_id=tid)
    assert closed.thread.state == "closed" and closed.thread.closed_at is not None

    with db(forum_daemon) as conn:
        types = [r[0] for r in conn.execute("SELECT event_type FROM forum_events WHERE thread_id = ? ORDER BY sequence", (tid,))]
        assert types == [
            "forum.thread.opened", "forum.post.added", "forum.assigned", "forum.state.changed",
            "forum.state.changed", "forum.priority.changed", "forum.post.added", "forum.state.changed",
            "forum.thread.closed",
        ]
        sequences = [r[0] for r in conn.execute("SELECT sequence FROM forum_events ORDER BY sequence")]
        assert sequences == list(range(1, len(sequences) + 1))  # gap-free
        assert conn.execute("SELECT COUNT(*) FROM forum_posts WHERE thread_id = ?", (tid,)).fetchone()[0] == 3
        transitions = conn.execute(
            "SELECT from_state, to_state FROM forum_state_transitions WHERE thread_id = ? ORDER BY id", (tid,)
        ).fetchall()
        assert [tuple(t) for t in transitions] == [
            ("new", "triaged"), ("triaged", "waiting_operator"), ("waiting_operator", "answered"), ("answered", "closed")
        ]
        assert conn.execute("SELECT assignee_name FROM forum_assignments WHERE thread_id = ?", (tid,)).fetchone()[0] == "olga"
        # Commands addressed to a thread carry its context in their events.
        assert {r[0] for r in conn.execute("SELECT run_id FROM forum_events WHERE thread_id = ?", (tid,))} == {"run-9"}
        # The thread view agrees with the write model.
        row = conn.execute("SELECT state, priority, posts_count FROM forum_thread_views WHERE thread_id = ?", (tid,)).fetchone()
        assert tuple(row) == ("closed", "urgent", 3)


def test_answer_is_post_plus_state_change_sharing_a_correlation_id(forum_daemon):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    result = forum.submit_sync(AnswerRequest(body="Proceed", actor_type="operator", actor_name="olga"), thread_id=tid)
    assert result.thread.state == "answered"
    with db(forum_daemon) as conn:
        post, state = conn.execute(
            "SELECT event_id, event_type, correlation_id, causation_id FROM forum_events"
            " WHERE thread_id = ? AND sequence > (SELECT MIN(sequence) FROM forum_events WHERE thread_id = ?)"
            " ORDER BY sequence",
            (tid, tid),
        ).fetchall()
        assert post["event_type"] == "forum.post.added" and state["event_type"] == "forum.state.changed"
        assert post["correlation_id"] == state["correlation_id"] == post["event_id"]
        assert state["causation_id"] == post["event_id"]
        assert result.event_id == state["event_id"]  # the caller waited for the last event of the write
        # An answered thread emits the integration message for docs sync.
        topics = [r[0] for r in conn.execute("SELECT topic FROM forum_outbox WHERE topic LIKE 'forum.integration.%'")]
        assert topics == ["forum.integration.docs_sync_requested"]


def test_answering_an_answered_thread_returns_a_view_with_the_new_post(forum_daemon):
    """The state change is a no-op, decided at once by the handler; the post it follows must
    still be visible in the view the caller gets back (read-your-writes)."""
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    for n in range(2, 14):
        result = forum.submit_sync(AnswerRequest(body=f"answer {n}", actor_type="operator"), thread_id=tid)
        assert result.status == "applied"
        assert (result.thread.state, result.thread.posts_count) == ("answered", n)
        assert result.thread.last_post_by_type == "operator"


def test_caller_supplied_correlation_and_causation_ids_are_kept(forum_daemon):
    forum = forum_daemon.forum
    tid = ask(forum, correlation_id="corr-1").thread_id
    forum.submit_sync(AddPostRequest(body="x", correlation_id="corr-1", causation_id="cause-1"), thread_id=tid)
    with db(forum_daemon) as conn:
        rows = conn.execute("SELECT correlation_id, causation_id FROM forum_events ORDER BY sequence").fetchall()
    assert [tuple(r) for r in rows] == [("corr-1", ""), ("corr-1", "cause-1")]


def test_same_state_change_and_closing_twice_are_accepted_no_ops(forum_daemon):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    same = forum.submit_sync(ChangeStateRequest(to_state="new"), thread_id=tid)
    assert same.status == "applied" and same.thread.state == "new"
    first = forum.submit_sync(CloseRequest(), thread_id=tid)
    again = forum.submit_sync(CloseRequest(), thread_id=tid)
    assert again.status == "applied"
    assert again.thread == first.thread  # returned unchanged
    closed_state = forum.submit_sync(ChangeStateRequest(to_state="closed"), thread_id=tid)
    assert closed_state.thread.state == "closed"
    with db(forum_daemon) as conn:
        types = [r[0] for r in conn.execute("SELECT event_type FROM forum_events ORDER BY sequence")]
        assert types == ["forum.thread.opened", "forum.thread.closed"]
        statuses = [r[0] for r in conn.execute("SELECT status FROM forum_command_results ORDER BY decided_at")]
        assert statuses.count("unchanged") == 3


def test_same_priority_is_a_no_op(forum_daemon):
    forum = forum_daemon.forum
    tid = ask(forum, priority="high").thread_id
    result = forum.submit_sync(SetPriorityRequest(priority="high"), thread_id=tid)
    assert result.thread.priority == "high"
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0] == 1


def test_open_with_the_same_thread_id_twice(forum_daemon):
    forum = forum_daemon.forum
    first = ask(forum, thread_id="ext-42", title="Same", body="Same body")
    assert first.thread_id == "ext-42"
    retry = ask(forum, thread_id="ext-42", title="Same", body="Same body")
    assert retry.thread_id == "ext-42" and retry.thread == first.thread
    error = refused(lambda: ask(forum, thread_id="ext-42", title="Different", body="Same body"))
    assert error.code == "conflict" and error.status == 409
    assert "ext-42" in error.message
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forum_threads").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0] == 1


def test_control_signals_of_every_type_share_one_control_thread_per_run_and_agent(forum_daemon):
    forum = forum_daemon.forum
    base = {"schema_version": 1}
    request = signal(forum, {**base, "control_type": "guidance_request", "question": "Which DB?", "context": "ctx"})
    tid = request.thread_id
    assert request.thread.title == "Control: alice" and request.thread.run_id == "run-1"

    def control_state() -> Any:
        # control_state is its own projection: the write returned once thread_views committed
        with db(forum_daemon) as conn:
            return conn.execute(
                "SELECT * FROM forum_control_state WHERE run_id = 'run-1' AND agent_name = 'alice'"
            ).fetchone()

    state = wait_until(lambda: (s := control_state()) is not None and s["pending_guidance"] == 1 and s, timeout=5)
    assert state["pending_question"] == "Which DB?"

    answer = signal(forum, {**base, "control_type": "guidance_answer", "answer": "SQLite"})
    completion = signal(forum, {**base, "control_type": "completion", "summary": "done"})
    validation = signal(forum, {**base, "control_type": "validation", "status": "passed", "done_criteria": "tests pass"})
    assert answer.thread_id == completion.thread_id == validation.thread_id == tid
    assert validation.thread.posts_count == 4

    other_agent = signal(forum, {**base, "control_type": "completion"}, agent="bob")
    other_run = signal(forum, {**base, "control_type": "completion"}, run_id="run-2")
    assert len({tid, other_agent.thread_id, other_run.thread_id}) == 3

    wait_until(lambda: (s := control_state()) is not None and s["validation_status"] == "passed", timeout=5)
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT is_control FROM forum_threads WHERE thread_id = ?", (tid,)).fetchone()[0] == 1
        rows = conn.execute("SELECT run_id, agent_name, thread_id FROM forum_control_threads ORDER BY run_id, agent_name").fetchall()
        assert [tuple(r) for r in rows] == [
            ("run-1", "alice", tid), ("run-1", "bob", other_agent.thread_id), ("run-2", "alice", other_run.thread_id)
        ]
        state = conn.execute("SELECT * FROM forum_control_state WHERE run_id = 'run-1' AND agent_name = 'alice'").fetchone()
        assert state["pending_guidance"] == 0
        assert state["completion_signalled"] == 1 and state["completion_summary"] == "done"
        assert (state["validation_status"], state["validation_done_criteria"]) == ("passed", "tests pass")
        bodies = [json.loads(r[0]) for r in conn.execute("SELECT body FROM forum_posts WHERE thread_id = ? ORDER BY created_at", (tid,))]
        assert [b["control_type"] for b in bodies] == ["guidance_request", "guidance_answer", "completion", "validation"]
        assert all(b["run_id"] == "run-1" and b["agent_name"] == "alice" for b in bodies)
        assert conn.execute("SELECT COUNT(*) FROM forum_events WHERE event_type = 'forum.control.signal'").fetchone()[0] == 6


def test_mark_seen_writes_a_marker_that_never_moves_back(forum_daemon):
    forum = forum_daemon.forum
    opened = ask(forum)
    tid = opened.thread_id
    forum.submit_sync(AddPostRequest(body="more", actor_type="agent"), thread_id=tid)
    marker = asyncio.run(forum.mark_seen(tid, "human", "bob"))
    assert marker.last_seen_event_sequence == 2
    older = asyncio.run(forum.mark_seen(tid, "human", "bob", 1))
    assert older.last_seen_event_sequence == 2
    from metawsm.forum.reads import Viewer

    viewer = Viewer.parse("human", "bob")
    assert forum.read(lambda r: r.get_thread(tid, viewer)).is_unseen is False
    forum.submit_sync(AddPostRequest(body="even more", actor_type="agent"), thread_id=tid)
    assert forum.read(lambda r: r.get_thread(tid, viewer)).is_unseen is True
    error = refused(lambda: asyncio.run(forum.mark_seen("fthr_missing", "human", "bob")))
    assert error.message == "forum thread fthr_missing not found" and error.status == 404
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forum_thread_reads").fetchone()[0] == 1


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        AddPostRequest(body="x"),
        AnswerRequest(body="x"),
        AssignRequest(assignee_type="operator", assignee_name="olga"),
        ChangeStateRequest(to_state="triaged"),
        SetPriorityRequest(priority="high"),
        CloseRequest(),
    ],
    ids=lambda r: type(r).__name__,
)
def test_unknown_thread_is_refused_with_404(forum_daemon, request_):
    error = refused(lambda: forum_daemon.forum.submit_sync(request_, thread_id="fthr_nope"))
    assert error.message == "forum thread fthr_nope not found"
    assert (error.code, error.status) == ("forum_thread_not_found", 404)


@pytest.mark.parametrize(
    "request_",
    [
        AddPostRequest(body="x"),
        AnswerRequest(body="x"),
        AssignRequest(assignee_type="operator", assignee_name="olga"),
        SetPriorityRequest(priority="high"),
    ],
    ids=lambda r: type(r).__name__,
)
def test_closed_thread_refuses_posts_assignments_and_priority(forum_daemon, request_):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    forum.submit_sync(CloseRequest(), thread_id=tid)
    error = refused(lambda: forum.submit_sync(request_, thread_id=tid))
    assert error.message == f"forum thread {tid} is closed"
    assert error.status == 400


def _path_to(state: str) -> list[str]:
    return {
        "new": [],
        "triaged": ["triaged"],
        "waiting_operator": ["waiting_operator"],
        "waiting_human": ["waiting_human"],
        "answered": ["answered"],
        "closed": ["closed"],
    }[state]


REFUSED = [
    (src.value, dst.value)
    for src in ThreadState
    for dst in ThreadState
    if src != dst and dst not in ALLOWED_TRANSITIONS[src]
]


def test_every_refused_transition_names_from_and_to(forum_daemon):
    forum = forum_daemon.forum
    threads: dict[str, str] = {}
    for state in ThreadState:
        tid = ask(forum, title=f"in {state.value}").thread_id
        for step in _path_to(state.value):
            assert forum.submit_sync(ChangeStateRequest(to_state=step), thread_id=tid).thread.state == step
        threads[state.value] = tid
    assert REFUSED  # e.g. answered -> triaged, anything out of closed
    for src, dst in REFUSED:
        error = refused(lambda: forum.submit_sync(ChangeStateRequest(to_state=dst), thread_id=threads[src]))
        assert error.message == f"forum state transition {src} -> {dst} is not allowed"
        assert (error.code, error.status) == ("forum_state_failed", 400)
    with db(forum_daemon) as conn:
        # nothing refused reached the log
        assert conn.execute("SELECT COUNT(*) FROM forum_state_transitions").fetchone()[0] == 5
    # and every allowed one applies
    for src in ThreadState:
        for dst in ALLOWED_TRANSITIONS[src]:
            tid = ask(forum, title=f"{src.value}->{dst.value}").thread_id
            for step in _path_to(src.value):
                forum.submit_sync(ChangeStateRequest(to_state=step), thread_id=tid)
            assert forum.submit_sync(ChangeStateRequest(to_state=dst.value), thread_id=tid).thread.state == dst.value


@pytest.mark.parametrize(
    ("make", "field", "allowed"),
    [
        (lambda: OpenThreadRequest(ticket="T", title="t", body="b", priority="huge"), "priority", "low, normal, high, urgent"),
        (lambda: OpenThreadRequest(ticket="T", title="t", body="b", actor_type="robot"), "actor_type", "agent, operator, human, system"),
        (lambda: ChangeStateRequest(to_state="done"), "state", "new, triaged, waiting_operator, waiting_human, answered, closed"),
        (lambda: SetPriorityRequest(priority="p0"), "priority", "low, normal, high, urgent"),
        (lambda: AssignRequest(assignee_type="robot", assignee_name="x"), "assignee_type", "agent, operator, human, system"),
        (lambda: AddPostRequest(body="b", actor_type="cat"), "actor_type", "agent, operator, human, system"),
    ],
    ids=["open-priority", "open-actor", "state", "priority", "assignee", "post-actor"],
)
def test_bad_enum_values_list_the_allowed_ones(forum_daemon, make, field, allowed):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    request = make()
    error = refused(lambda: forum.submit_sync(request, thread_id=tid))
    assert f"invalid {field} " in error.message and error.message.endswith(f"must be one of {allowed}")
    assert error.status == 400


@pytest.mark.parametrize(
    ("make", "message", "code"),
    [
        (lambda: OpenThreadRequest(ticket="T", title="  ", body="b"), "forum thread title is required", "forum_open_failed"),
        (lambda: OpenThreadRequest(ticket="T", title="t", body=""), "forum thread body is required", "forum_open_failed"),
        (lambda: OpenThreadRequest(ticket=" ", title="t", body="b"), "forum thread ticket is required", "forum_open_failed"),
        (lambda: AddPostRequest(body=" \n"), "forum post body is required", "forum_add_post_failed"),
        (lambda: AnswerRequest(body=""), "forum post body is required", "forum_add_post_failed"),
        (lambda: AssignRequest(assignee_type="human", assignee_name=""), "forum assignee_name is required", "forum_assign_failed"),
    ],
    ids=["title", "body", "ticket", "post", "answer", "assignee"],
)
def test_empty_required_text_is_refused(forum_daemon, make, message, code):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    error = refused(lambda: forum.submit_sync(make(), thread_id=tid))
    assert (error.message, error.code, error.status) == (message, code, 400)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"control_type": "guidance_request"}, "forum control guidance_request requires question"),
        ({"control_type": "guidance_request", "question": "  "}, "forum control guidance_request requires question"),
        ({"control_type": "guidance_answer"}, "forum control guidance_answer requires answer"),
        ({"control_type": "validation", "status": "maybe", "done_criteria": "x"}, "forum control validation status must be passed|failed"),
        ({"control_type": "validation", "done_criteria": "x"}, "forum control validation status must be passed|failed"),
        ({"control_type": "validation", "status": "passed"}, "forum control validation requires done_criteria"),
        ({"control_type": "completion", "schema_version": 2}, "forum control schema_version must be 1"),
        ({"control_type": "completion", "schema_version": None}, "forum control schema_version must be 1"),
        ({"control_type": "shout"}, "forum control control_type must be guidance_request|guidance_answer|completion|validation"),
        ({"control_type": "completion", "colour": "red"}, 'forum control payload has unknown field "colour"'),
        ({"control_type": "completion", "run_id": "run-other"}, "forum control payload run_id 'run-other' does not match run_id 'run-1'"),
    ],
    ids=["question", "blank-question", "answer", "status", "no-status", "criteria", "version", "no-version",
         "type", "unknown", "run-mismatch"],
)
def test_control_payload_errors(forum_daemon, payload, message):
    payload = {"schema_version": 1, **payload}
    if payload.get("schema_version") is None:
        del payload["schema_version"]
    error = refused(lambda: signal(forum_daemon.forum, payload))
    assert (error.message, error.code, error.status) == (message, "forum_control_signal_failed", 400)
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forum_outbox").fetchone()[0] == 0


def test_control_signal_requires_run_and_agent(forum_daemon):
    forum = forum_daemon.forum
    payload = {"schema_version": 1, "control_type": "completion"}
    error = refused(lambda: signal(forum, payload, run_id=" "))
    assert error.message == "forum control run_id is required"
    error = refused(lambda: signal(forum, payload, agent=""))
    assert error.message == "forum control agent_name is required"


def test_refusals_leave_no_trace(forum_daemon):
    forum = forum_daemon.forum
    tid = ask(forum).thread_id
    forum.submit_sync(CloseRequest(), thread_id=tid)
    for request in (AddPostRequest(body="late"), SetPriorityRequest(priority="low"), ChangeStateRequest(to_state="new")):
        refused(lambda: forum.submit_sync(request, thread_id=tid))
    with db(forum_daemon) as conn:
        assert conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0] == 2
        commands = conn.execute("SELECT COUNT(*) FROM forum_outbox WHERE topic LIKE 'forum.commands.%'").fetchone()[0]
        assert commands == 2  # refused at intake: nothing was enqueued


# -- the runbook's SQL ----------------------------------------------------------------------

RUNBOOK_QUERIES = [
    "select status,count(*) from forum_outbox group by status;",
    "select sequence,event_type,thread_id,occurred_at from forum_events order by sequence desc limit 20;",
    "select projection_name,count(*) from forum_projection_events group by projection_name;",
]


def _written_database(forum_daemon: Any) -> tuple[str, int]:
    forum = forum_daemon.forum
    for i in range(3):
        tid = ask(forum, title=f"q{i}").thread_id
        forum.submit_sync(AnswerRequest(body="a"), thread_id=tid)
    signal(forum, {"schema_version": 1, "control_type": "completion"})
    with db(forum_daemon) as conn:
        events = conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0]
    return str(forum_daemon.services.db.path), events


def test_runbook_queries_run_verbatim_with_python_sqlite(forum_daemon):
    path, events = _written_database(forum_daemon)
    conn = sqlite3.connect(path)
    try:
        status = dict(conn.execute(RUNBOOK_QUERIES[0]).fetchall())
        assert set(status) <= {"pending", "processing", "sent", "failed", "parked"}
        assert sum(status.values()) == conn.execute("SELECT COUNT(*) FROM forum_outbox").fetchone()[0]
        latest = conn.execute(RUNBOOK_QUERIES[1]).fetchall()
        assert [r[0] for r in latest] == list(range(events, 0, -1))
        assert {r[1] for r in latest} >= {"forum.thread.opened", "forum.post.added", "forum.state.changed"}

        def all_applied() -> dict[str, int] | None:
            counts = dict(conn.execute(RUNBOOK_QUERIES[2]).fetchall())
            expected = {"thread_views": events, "thread_stats": events, "queue_view": events, "control_state": events}
            return counts if counts == expected else None

        wait_until(all_applied, timeout=5, message="every projection applies every event")
    finally:
        conn.close()


def test_runbook_queries_run_verbatim_with_the_sqlite3_shell(forum_daemon):
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.fail("the sqlite3 command-line shell is required (apt-get install sqlite3)", pytrace=False)
    path, events = _written_database(forum_daemon)
    outputs = []
    for query in RUNBOOK_QUERIES:
        done = subprocess.run([shell, path, query], capture_output=True, text=True, timeout=10, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        outputs.append([line.split("|") for line in done.stdout.splitlines()])
    status, latest, projections = outputs
    assert all(len(row) == 2 and row[0] in ("pending", "sent") for row in status)
    assert [int(row[0]) for row in latest] == list(range(events, 0, -1))
    assert all(row[3].endswith("Z") or "+" in row[3] for row in latest)
    assert {row[0] for row in projections} <= {"thread_views", "thread_stats", "queue_view", "control_state"}
