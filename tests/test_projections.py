"""Forum projections against a real migrated SQLite file: the effect of each event type on each
read model, clear(), and that replaying the whole history equals applying it incrementally."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from metawsm.forum.errors import ForumError
from metawsm.forum.projections.control_state import ControlStateProjection
from metawsm.forum.projections.queue_view import QueueViewProjection
from metawsm.forum.projections.registry import (
    PROJECTION_NAMES,
    all_projections,
    create_projection,
)
from metawsm.forum.projections.thread_stats import ThreadStatsProjection
from metawsm.forum.projections.thread_views import ThreadViewsProjection, search_row_count, search_tokens
from metawsm.store import Database, open_connection, write_transaction
from metawsm.store.schema_forum import PROJECTION_TABLES, SEARCH_POST_BITS
from support.forum_events import ForumEvents, apply_all, clear_all


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    Database(db_path).migrate()
    connection = open_connection(db_path)
    try:
        yield connection
    finally:
        connection.close()


def rows(conn: sqlite3.Connection, sql: str, *params: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sql, params).fetchall()]


def one(conn: sqlite3.Connection, sql: str, *params: Any) -> dict[str, Any]:
    found = rows(conn, sql, *params)
    assert len(found) == 1, found
    return found[0]


def view(conn: sqlite3.Connection, thread_id: str) -> dict[str, Any]:
    return one(conn, "SELECT * FROM forum_thread_views WHERE thread_id = ?", thread_id)


def queue_row(conn: sqlite3.Connection, thread_id: str) -> dict[str, Any]:
    return one(conn, "SELECT * FROM forum_thread_queue_view WHERE thread_id = ?", thread_id)


def stats(conn: sqlite3.Connection) -> dict[tuple[str, str, str, str], int]:
    return {
        (r["ticket"], r["run_id"], r["state"], r["priority"]): r["thread_count"]
        for r in rows(conn, "SELECT * FROM forum_thread_stats")
    }


# --- registry -------------------------------------------------------------------------------


def test_registry_names_and_unknown_projection() -> None:
    assert PROJECTION_NAMES == ("thread_views", "thread_stats", "queue_view", "control_state")
    assert [p.name for p in all_projections()] == list(PROJECTION_NAMES)
    assert set(PROJECTION_NAMES) == set(PROJECTION_TABLES)
    assert isinstance(create_projection("queue_view"), QueueViewProjection)
    with pytest.raises(ForumError) as caught:
        create_projection("nope")
    assert caught.value.code == "invalid_projection"
    assert caught.value.status == 400
    assert str(caught.value) == (
        'unknown projection "nope": must be one of thread_views, thread_stats, queue_view, control_state'
    )


# --- thread_views ---------------------------------------------------------------------------


def test_thread_views_follow_every_event_type(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    opened = ev.open(
        "Build is red", "It fails", ticket="T-9", run_id="run_1", agent_name="alice",
        priority="high", actor_type="agent", actor_name="alice",
    )
    tid = opened.envelope.thread_id
    p = ThreadViewsProjection()
    apply_all(conn, [p], ev.take())
    row = view(conn, tid)
    assert row == {
        "thread_id": tid, "ticket": "T-9", "run_id": "run_1", "agent_name": "alice",
        "title": "Build is red", "state": "new", "priority": "high", "assignee_type": "",
        "assignee_name": "", "opened_by_type": "agent", "opened_by_name": "alice", "is_control": 0,
        "posts_count": 1, "last_post_at": opened.envelope.occurred_at, "last_post_by_type": "agent",
        "last_post_by_name": "alice", "last_event_sequence": 1, "last_actor_type": "agent",
        "opened_at": opened.envelope.occurred_at, "updated_at": opened.envelope.occurred_at,
        "closed_at": None,
    }
    key = opened.sequence << SEARCH_POST_BITS  # the thread's search key: its first post's sequence
    assert search_tokens(conn) == {key + 1: ("build is red", "it fails")}  # contentless: tokens, not text

    posted = ev.post(tid, "Looking into it", actor_type="human", actor_name="bob")
    apply_all(conn, [p], ev.take())
    row = view(conn, tid)
    assert (row["posts_count"], row["last_post_at"], row["last_post_by_type"], row["last_post_by_name"]) == (
        2, posted.envelope.occurred_at, "human", "bob",
    )
    assert (row["last_event_sequence"], row["last_actor_type"], row["updated_at"]) == (
        2, "human", posted.envelope.occurred_at,
    )
    assert row["opened_at"] == opened.envelope.occurred_at
    assert search_tokens(conn)[key + 2] == ("", "looking into it")

    assigned = ev.assign(tid, "carol", assignee_type="operator", actor_type="operator", actor_name="op")
    apply_all(conn, [p], ev.take())
    row = view(conn, tid)
    assert (row["assignee_type"], row["assignee_name"], row["posts_count"]) == ("operator", "carol", 2)
    assert (row["last_event_sequence"], row["last_actor_type"], row["updated_at"]) == (
        3, "operator", assigned.envelope.occurred_at,
    )
    assert row["last_post_by_name"] == "bob"  # not a post

    ev.change_state(tid, "waiting_human")
    ev.set_priority(tid, "urgent", actor_type="system", actor_name="")
    apply_all(conn, [p], ev.take())
    row = view(conn, tid)
    assert (row["state"], row["priority"], row["last_event_sequence"], row["last_actor_type"]) == (
        "waiting_human", "urgent", 5, "system",
    )
    assert row["closed_at"] is None

    closed = ev.close(tid)
    apply_all(conn, [p], ev.take())
    row = view(conn, tid)
    assert (row["state"], row["closed_at"], row["updated_at"], row["last_event_sequence"]) == (
        "closed", closed.envelope.occurred_at, closed.envelope.occurred_at, 6,
    )


def test_thread_views_state_change_to_closed_sets_closed_at(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open().envelope.thread_id
    changed = ev.change_state(tid, "closed")
    apply_all(conn, [ThreadViewsProjection()], ev.take())
    row = view(conn, tid)
    assert (row["state"], row["closed_at"]) == ("closed", changed.envelope.occurred_at)


def test_thread_views_control_signals_open_and_post(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    first = ev.signal("guidance_request", run_id="run_7", agent_name="alice", ticket="T-3", question="Which DB?")
    second = ev.signal("completion", run_id="run_7", agent_name="alice", ticket="T-3", summary="done")
    tid = first.envelope.thread_id
    assert second.envelope.thread_id == tid
    apply_all(conn, [ThreadViewsProjection()], ev.take())
    row = view(conn, tid)
    assert row["is_control"] == 1
    assert (row["title"], row["ticket"], row["run_id"], row["agent_name"]) == ("Control: alice", "T-3", "run_7", "alice")
    assert (row["state"], row["priority"], row["posts_count"]) == ("new", "normal", 2)
    assert (row["opened_by_type"], row["opened_by_name"], row["opened_at"]) == ("agent", "alice", first.envelope.occurred_at)
    assert (row["last_post_at"], row["last_event_sequence"]) == (second.envelope.occurred_at, 2)
    key = first.sequence << SEARCH_POST_BITS
    assert search_row_count(conn) == 2
    assert {rowid: title for rowid, (title, _) in search_tokens(conn).items()} == {
        key + 1: "control alice",
        key + 2: "",
    }


# --- thread_stats ---------------------------------------------------------------------------


def test_thread_stats_counts_across_opens_state_priority_and_close(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    p = ThreadStatsProjection()
    a = ev.open(ticket="T-1", run_id="r1").envelope.thread_id
    b = ev.open(ticket="T-1", run_id="r1").envelope.thread_id
    c = ev.open(ticket="T-1", priority="high").envelope.thread_id
    ev.open(ticket="T-2", run_id="r1")
    apply_all(conn, [p], ev.take())
    assert stats(conn) == {
        ("T-1", "r1", "new", "normal"): 2,
        ("T-1", "", "new", "high"): 1,
        ("T-2", "r1", "new", "normal"): 1,
    }
    ev.change_state(a, "triaged")
    ev.set_priority(b, "urgent")
    apply_all(conn, [p], ev.take())
    assert stats(conn) == {
        ("T-1", "r1", "triaged", "normal"): 1,
        ("T-1", "r1", "new", "urgent"): 1,
        ("T-1", "", "new", "high"): 1,
        ("T-2", "r1", "new", "normal"): 1,
    }
    ev.set_priority(a, "low")  # payload.state carries "triaged"
    ev.change_state(b, "answered")  # payload.priority carries "urgent"
    ev.close(c)
    ev.change_state(a, "triaged")  # same state: nothing moves
    apply_all(conn, [p], ev.take())
    assert stats(conn) == {
        ("T-1", "r1", "triaged", "low"): 1,
        ("T-1", "r1", "answered", "urgent"): 1,
        ("T-1", "", "closed", "high"): 1,
        ("T-2", "r1", "new", "normal"): 1,
    }
    ev.close(a)
    ev.close(b)
    apply_all(conn, [p], ev.take())
    assert stats(conn) == {
        ("T-1", "r1", "closed", "low"): 1,
        ("T-1", "r1", "closed", "urgent"): 1,
        ("T-1", "", "closed", "high"): 1,
        ("T-2", "r1", "new", "normal"): 1,
    }
    # no zero rows are left behind
    assert conn.execute("SELECT count(*) FROM forum_thread_stats WHERE thread_count <= 0").fetchone()[0] == 0


def test_thread_stats_count_control_threads_once(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    ev.signal("guidance_request", run_id="r1", agent_name="alice", question="q?")
    ev.signal("guidance_answer", run_id="r1", agent_name="alice", actor_type="operator", actor_name="op", answer="a")
    ev.signal("completion", run_id="r1", agent_name="bob")
    apply_all(conn, [ThreadStatsProjection()], ev.take())
    assert stats(conn) == {("T-1", "r1", "new", "normal"): 2}


# --- queue_view -----------------------------------------------------------------------------


def test_queue_view_needs_answer_rules(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    p = QueueViewProjection()
    tid = ev.open(ticket="T-1", run_id="r1", agent_name="alice", actor_type="agent", actor_name="alice").envelope.thread_id

    def needs_answer() -> int:
        apply_all(conn, [p], ev.take())
        return int(queue_row(conn, tid)["needs_answer"])

    assert needs_answer() == 1  # opened by an agent
    ev.post(tid, actor_type="system", actor_name="")
    assert needs_answer() == 1  # system post: unchanged
    ev.post(tid, actor_type="human", actor_name="bob")
    assert needs_answer() == 0
    ev.post(tid, actor_type="system", actor_name="")
    assert needs_answer() == 0  # still unchanged
    ev.change_state(tid, "waiting_operator", actor_type="agent", actor_name="alice")
    assert needs_answer() == 0  # not a post
    ev.post(tid, actor_type="agent", actor_name="alice")
    assert needs_answer() == 1
    ev.post(tid, actor_type="operator", actor_name="op")
    assert needs_answer() == 0

    human = ev.open(actor_type="human", actor_name="bob").envelope.thread_id
    apply_all(conn, [p], ev.take())
    assert queue_row(conn, human)["needs_answer"] == 0


def test_queue_view_tracks_thread_fields(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open(ticket="T-5", run_id="r9", agent_name="alice", priority="low").envelope.thread_id
    ev.assign(tid, "carol")
    ev.set_priority(tid, "high")
    ev.change_state(tid, "triaged")
    last = ev.post(tid, actor_type="human", actor_name="dave")
    apply_all(conn, [QueueViewProjection()], ev.take())
    assert queue_row(conn, tid) == {
        "thread_id": tid, "ticket": "T-5", "run_id": "r9", "agent_name": "alice", "state": "triaged",
        "priority": "high", "assignee_name": "carol", "last_event_sequence": last.sequence,
        "last_actor_type": "human", "needs_answer": 0, "updated_at": last.envelope.occurred_at,
    }
    ev.close(tid)
    apply_all(conn, [QueueViewProjection()], ev.take())
    assert queue_row(conn, tid)["state"] == "closed"


def test_queue_view_control_signals_are_posts(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.signal("guidance_request", question="q?").envelope.thread_id
    apply_all(conn, [QueueViewProjection()], ev.take())
    assert queue_row(conn, tid)["needs_answer"] == 1
    ev.signal("guidance_answer", answer="a", actor_type="operator", actor_name="op")
    apply_all(conn, [QueueViewProjection()], ev.take())
    assert queue_row(conn, tid)["needs_answer"] == 0


# --- control_state --------------------------------------------------------------------------


def control(conn: sqlite3.Connection, run_id: str, agent: str) -> dict[str, Any]:
    return one(conn, "SELECT * FROM forum_control_state WHERE run_id = ? AND agent_name = ?", run_id, agent)


def test_control_state_per_signal_type(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    p = ControlStateProjection()
    request = ev.signal("guidance_request", run_id="r1", agent_name="alice", ticket="T-4", question="Which DB?", context="see README")
    apply_all(conn, [p], ev.take())
    row = control(conn, "r1", "alice")
    assert row == {
        "run_id": "r1", "agent_name": "alice", "ticket": "T-4", "thread_id": request.envelope.thread_id,
        "pending_guidance": 1, "pending_question": "Which DB?", "pending_context": "see README",
        "pending_event_id": request.envelope.event_id, "completion_signalled": 0, "completion_summary": "",
        "validation_status": "", "validation_done_criteria": "", "last_signal_at": request.envelope.occurred_at,
        "last_event_sequence": 1,
    }
    answer = ev.signal("guidance_answer", run_id="r1", agent_name="alice", ticket="T-4", answer="Postgres",
                       actor_type="operator", actor_name="op")
    apply_all(conn, [p], ev.take())
    row = control(conn, "r1", "alice")
    assert (row["pending_guidance"], row["pending_question"], row["pending_context"], row["pending_event_id"]) == (0, "", "", "")
    assert (row["last_signal_at"], row["last_event_sequence"]) == (answer.envelope.occurred_at, 2)

    ev.signal("validation", run_id="r1", agent_name="alice", ticket="T-4", status="failed", done_criteria="tests pass")
    ev.signal("completion", run_id="r1", agent_name="alice", ticket="T-4", summary="all done")
    ev.signal("validation", run_id="r1", agent_name="alice", ticket="T-4", status="passed", done_criteria="tests pass")
    apply_all(conn, [p], ev.take())
    row = control(conn, "r1", "alice")
    assert (row["completion_signalled"], row["completion_summary"]) == (1, "all done")
    assert (row["validation_status"], row["validation_done_criteria"]) == ("passed", "tests pass")
    assert (row["pending_guidance"], row["last_event_sequence"]) == (0, 5)

    # another agent of the same run has its own row; other events are ignored
    ev.signal("completion", run_id="r1", agent_name="bob", ticket="T-4")
    tid = ev.open().envelope.thread_id
    ev.post(tid)
    apply_all(conn, [p], ev.take())
    bob = control(conn, "r1", "bob")
    assert (bob["completion_signalled"], bob["completion_summary"], bob["pending_guidance"]) == (1, "", 0)
    assert bob["thread_id"] != row["thread_id"]
    assert conn.execute("SELECT count(*) FROM forum_control_state").fetchone()[0] == 2


# --- clear and replay -----------------------------------------------------------------------


def history(ev: ForumEvents) -> None:
    """A mixed history touching every event type and every projection."""
    a = ev.open("Build is red", "CI fails", ticket="T-1", run_id="r1", agent_name="alice").envelope.thread_id
    b = ev.open("Docs question", "Where is the café?", ticket="T-2", actor_type="human", actor_name="bob").envelope.thread_id
    ev.post(a, "on it", actor_type="human", actor_name="bob")
    ev.signal("guidance_request", run_id="r1", agent_name="alice", question="Which DB?")
    ev.assign(a, "carol")
    ev.set_priority(b, "urgent")
    ev.change_state(a, "waiting_human")
    ev.post(b, "answer soon", actor_type="agent", actor_name="alice")
    ev.signal("guidance_answer", run_id="r1", agent_name="alice", answer="sqlite", actor_type="operator", actor_name="op")
    ev.signal("validation", run_id="r1", agent_name="alice", status="passed", done_criteria="green")
    ev.close(b)
    ev.post(a, "fixed", actor_type="system", actor_name="")
    ev.signal("completion", run_id="r1", agent_name="zed", summary="ok")


def snapshot(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    result = {}
    for tables in PROJECTION_TABLES.values():
        for table in tables:
            if table == "forum_search":  # contentless: what it indexed, by rowid (thread key + post number)
                result[table] = [(rowid, *tokens) for rowid, tokens in sorted(search_tokens(conn).items())]
                continue
            sql = f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4"
            result[table] = [tuple(r) for r in conn.execute(sql).fetchall()]
    return result


def count(conn: sqlite3.Connection, table: str) -> int:
    if table == "forum_search":  # contentless FTS5 (migration 13): cannot be scanned
        return search_row_count(conn)
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_clear_empties_owned_tables_only(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    history(ev)
    projections = all_projections()
    apply_all(conn, projections, ev.take())
    for projection in projections:
        owned = PROJECTION_TABLES[projection.name]
        others = [t for name, ts in PROJECTION_TABLES.items() if name != projection.name for t in ts]
        before = {t: count(conn, t) for t in others}
        assert all(count(conn, t) > 0 for t in owned)
        with write_transaction(conn):
            projection.clear(conn)
        assert all(count(conn, t) == 0 for t in owned), projection.name
        assert before == {t: count(conn, t) for t in others}
        apply_all(conn, [projection], ev.events)  # rebuild it for the next round


def test_replay_after_clear_equals_incremental(conn: sqlite3.Connection) -> None:
    ev = ForumEvents(step=timedelta(milliseconds=7))
    history(ev)
    projections = all_projections()
    for event in ev.take():  # incremental: one transaction per event, as the runner does
        apply_all(conn, projections, [event])
    incremental = snapshot(conn)
    assert all(incremental.values())
    clear_all(conn, projections)
    assert not any(snapshot(conn).values())
    apply_all(conn, all_projections(), ev.events)  # fresh objects: projections keep no state
    assert snapshot(conn) == incremental
    # and a search still finds what the incremental index found
    hits = conn.execute(
        f"SELECT DISTINCT rowid >> {SEARCH_POST_BITS} FROM forum_search WHERE forum_search MATCH 'cafe'").fetchall()
    assert len(hits) == 1


def test_projections_ignore_events_they_do_not_use(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open().envelope.thread_id
    ev.post(tid)
    ev.assign(tid)
    apply_all(conn, [ControlStateProjection(), ThreadStatsProjection()], ev.take())
    assert conn.execute("SELECT count(*) FROM forum_control_state").fetchone()[0] == 0
    assert stats(conn) == {("T-1", "", "new", "normal"): 1}
