"""ForumReader against a real migrated SQLite file fed by the test pipeline (log, write model,
projections, checkpoints): lists, detail, search, queues, events, stats, debug; and the seen
markers the queues read (:mod:`metawsm.forum.seen`, the write side)."""

from __future__ import annotations

import base64
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metawsm.clock import format_time
from metawsm.forum.cursor import decode_thread_cursor, encode_thread_cursor, parse_event_cursor
from metawsm.forum.errors import ForumError, ThreadNotFound
from metawsm.forum.projections.registry import PROJECTION_NAMES, create_projection
from metawsm.forum.reads import ForumReader, ThreadFilters, Viewer
from metawsm.forum.seen import mark_seen
from metawsm.forum.views import EventPage, ThreadPage, ThreadView
from metawsm.store import Database, write_transaction
from support.forum_events import BASE_TIME, ForumEvents, ingest, write_log


@pytest.fixture
def database(db_path: Path) -> Database:
    db = Database(db_path)
    db.migrate()
    return db


@pytest.fixture
def conn(database: Database) -> Iterator[sqlite3.Connection]:
    connection = database.connect()
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def reader(conn: sqlite3.Connection) -> ForumReader:
    return ForumReader(conn)


def ids(threads: list[ThreadView]) -> list[str]:
    return [t.thread_id for t in threads]


@contextmanager
def refused(code: str) -> Iterator[pytest.ExceptionInfo[ForumError]]:
    """Expect a ForumError with ``code`` and HTTP status 400."""
    with pytest.raises(ForumError) as info:
        yield info
    assert (info.value.code, info.value.status) == (code, 400), str(info.value)


def all_pages(fetch: Any, limit: int) -> list[str]:
    """Follow next_cursor to the end; return every thread id in page order."""
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        threads, cursor = fetch(cursor, limit)
        assert len(threads) <= limit
        seen.extend(ids(threads))
        if cursor is None:
            return seen
        assert threads, "a non-final page must not be empty"
    raise AssertionError("pagination did not end")


# --- lists ----------------------------------------------------------------------------------


@pytest.fixture
def listed(conn: sqlite3.Connection) -> dict[str, str]:
    ev = ForumEvents()
    a = ev.open("Build is red", ticket="T-1", run_id="r1").envelope.thread_id
    b = ev.open("Flaky test", ticket="T-1", run_id="r2", priority="high").envelope.thread_id
    c = ev.open("Docs", ticket="T-2", run_id="r1", actor_type="human", actor_name="bob").envelope.thread_id
    ev.assign(b, "carol")
    ev.change_state(c, "triaged")
    ev.post(a, "bump")  # a becomes the most recently updated
    ingest(conn, ev.take())
    return {"a": a, "b": b, "c": c}


def test_list_threads_newest_update_first_and_filters(reader: ForumReader, listed: dict[str, str]) -> None:
    a, b, c = listed["a"], listed["b"], listed["c"]
    assert ids(reader.list_threads()) == [a, c, b]
    assert ids(reader.list_threads({"ticket": "T-1"})) == [a, b]
    assert ids(reader.list_threads(ThreadFilters(run_id="r1"))) == [a, c]
    assert ids(reader.list_threads({"state": "triaged"})) == [c]
    assert ids(reader.list_threads({"priority": "high"})) == [b]
    assert ids(reader.list_threads({"assignee": "carol"})) == [b]
    assert ids(reader.list_threads({"ticket": "T-1", "run_id": "r1", "state": "new"})) == [a]
    assert ids(reader.list_threads({"ticket": "", "run_id": None})) == [a, c, b]  # empty = any
    assert reader.list_threads({"ticket": "T-404"}) == []
    assert ids(reader.list_threads(limit=2)) == [a, c]
    assert ids(reader.list_threads(limit="1")) == [a]
    assert all(t.is_unseen is None and t.is_unanswered is None for t in reader.list_threads())


@pytest.mark.parametrize("limit", [0, -1, 501, "x", "", True, 2.5, "1e3"])
def test_list_limit_errors(reader: ForumReader, limit: Any) -> None:
    if limit == "":
        assert reader.list_threads(limit=limit) == []  # empty = default
        return
    with refused("invalid_limit"):
        reader.list_threads(limit=limit)


def test_list_filter_errors(reader: ForumReader) -> None:
    with refused("invalid_filter") as r:
        reader.list_threads({"state": "open"})
    assert str(r.value) == (
        'invalid state "open": must be one of new, triaged, waiting_operator, waiting_human, answered, closed'
    )
    with refused("invalid_filter"):
        reader.list_threads({"priority": "HIGH"})
    with refused("invalid_filter"):
        reader.list_threads({"colour": "red"})
    with refused("invalid_filter"):
        reader.list_threads({"ticket": 3})
    with refused("invalid_filter"):
        reader.list_threads({"ticket": "\udcff"})  # not encodable: refused, not a 500
    with refused("invalid_filter"):
        Viewer.parse("robot", "x")
    with refused("invalid_filter"):
        Viewer.parse("human", "")
    assert Viewer.parse(None, None) is None


def test_thread_view_encoding_omits_empties(reader: ForumReader, listed: dict[str, str]) -> None:
    plain = msgspec.json.decode(msgspec.json.encode(reader.get_thread(listed["a"])))
    assert list(plain) == [
        "thread_id", "ticket", "run_id", "title", "state", "priority", "opened_by_type", "opened_by_name",
        "posts_count", "last_post_at", "last_post_by_type", "last_post_by_name", "last_event_sequence",
        "last_actor_type", "opened_at", "updated_at",
    ]  # no agent_name/assignee_*, no closed_at, no viewer flags
    with_viewer = msgspec.json.decode(
        msgspec.json.encode(reader.get_thread(listed["a"], Viewer("human", "bob")))
    )
    assert with_viewer["is_unseen"] is False  # bob wrote the last post
    assert with_viewer["is_unanswered"] is False
    assigned = msgspec.json.decode(msgspec.json.encode(reader.get_thread(listed["b"])))
    assert (assigned["assignee_type"], assigned["assignee_name"]) == ("operator", "carol")
    # a brand-new thread with no posts yet still reports its zero counters
    zero = ThreadView(
        thread_id="fthr_x", ticket="T", title="t", state="new", priority="normal", opened_by_type="agent",
        posts_count=0, last_event_sequence=0, opened_at="x", updated_at="x",
    )
    encoded = msgspec.json.decode(msgspec.json.encode(zero))
    assert encoded["posts_count"] == 0 and encoded["last_event_sequence"] == 0
    page = msgspec.json.decode(msgspec.json.encode(ThreadPage(threads=[], next_cursor=None)))
    assert page == {"threads": [], "next_cursor": None}


# --- single thread and detail ---------------------------------------------------------------


def test_get_thread_and_detail(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    opened = ev.open("Build is red", "first", actor_type="agent", actor_name="alice")
    tid = opened.envelope.thread_id
    ev.post(tid, "second", actor_type="human", actor_name="bob")
    ev.change_state(tid, "answered")
    ev.post(tid, "third", actor_type="agent", actor_name="alice")
    other = ev.open("Other").envelope.thread_id
    ev.post(other, "not mine")
    ingest(conn, ev.take())
    detail = reader.thread_detail(tid)
    assert detail.thread == reader.get_thread(tid)
    assert detail.thread.posts_count == 3 and detail.thread.state == "answered"
    assert [p.body for p in detail.posts] == ["first", "second", "third"]
    assert [(p.author_type, p.author_name) for p in detail.posts] == [("agent", "alice"), ("human", "bob"), ("agent", "alice")]
    assert [e.sequence for e in detail.events] == [1, 2, 3, 4]
    assert [e.envelope.event_type for e in detail.events] == [
        "forum.thread.opened", "forum.post.added", "forum.state.changed", "forum.post.added",
    ]
    first = detail.events[0]
    assert first.envelope == opened.envelope
    assert first.payload_json["body"] == "first" and first.payload_json["type"] == "forum.thread.opened"
    assert detail.events[2].payload_json == {
        "type": "forum.state.changed", "from_state": "new", "to_state": "answered", "priority": "normal",
    }
    encoded = msgspec.json.decode(msgspec.json.encode(detail))
    assert set(encoded) == {"thread", "posts", "events"}
    assert set(encoded["events"][0]) == {"sequence", "envelope", "payload_json"}
    assert isinstance(encoded["events"][0]["payload_json"], dict)


def test_unknown_thread_is_404(reader: ForumReader) -> None:
    for call in (reader.get_thread, reader.thread_detail):
        with pytest.raises(ThreadNotFound) as caught:
            call("fthr_missing")
        assert (caught.value.status, caught.value.code) == (404, "forum_thread_not_found")
        assert str(caught.value) == "forum thread fthr_missing not found"


def test_thread_only_in_write_model_is_built_from_it(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open("Not projected yet", "hello", run_id="r1", actor_type="agent", actor_name="alice").envelope.thread_id
    ev.post(tid, "more", actor_type="agent", actor_name="alice")
    ingest(conn, ev.take(), projections=[])  # log and write model only
    view = reader.get_thread(tid, Viewer("human", "bob"))
    assert (view.title, view.posts_count, view.last_event_sequence, view.last_post_by_name) == ("Not projected yet", 2, 2, "alice")
    assert (view.is_unseen, view.is_unanswered) == (True, True)
    assert reader.list_threads() == []  # lists read only the read model
    detail = reader.thread_detail(tid)
    assert [p.body for p in detail.posts] == ["hello", "more"] and len(detail.events) == 2
    # once projected, the projected view is the same as the one built from the write model
    ingest_projections_only(conn, ev.events)
    assert reader.get_thread(tid, Viewer("human", "bob")) == view


def ingest_projections_only(conn: sqlite3.Connection, events: list[Any]) -> None:
    with write_transaction(conn):
        for event in events:
            for name in PROJECTION_NAMES:
                create_projection(name).apply(conn, event)


# --- search ---------------------------------------------------------------------------------


@pytest.fixture
def searchable(conn: sqlite3.Connection) -> dict[str, str]:
    ev = ForumEvents()
    red = ev.open("Build is RED", "The deploy failed on Tuesday", ticket="T-1").envelope.thread_id
    cafe = ev.open("Menu", "Meet at the Café near the station", ticket="T-2").envelope.thread_id
    split = ev.open("Deploy checklist", "step one", ticket="T-1").envelope.thread_id
    ev.post(split, "rollback plan ready")
    jp = ev.open("日本語 スレッド", "東京 deploy", ticket="T-3").envelope.thread_id
    ingest(conn, ev.take())
    return {"red": red, "cafe": cafe, "split": split, "jp": jp}


def test_search_titles_and_bodies_case_insensitive(reader: ForumReader, searchable: dict[str, str]) -> None:
    s = searchable

    def find(query: str, **kw: Any) -> set[str]:
        threads, cursor = reader.search(query, **kw)
        assert cursor is None
        return set(ids(threads))

    assert find("red") == {s["red"]}  # title, case folded
    assert find("TUESDAY") == {s["red"]}  # body
    assert find("cafe") == {s["cafe"]} == find("CAFÉ")  # accents folded
    assert find("deploy") == {s["red"], s["split"], s["jp"]}
    assert find("deploy rollback") == {s["split"]}  # terms may be in different posts of a thread
    assert find("deploy tuesday") == {s["red"]}
    assert find("depl*") == {s["red"], s["split"], s["jp"]}  # trailing * = prefix
    assert find("depl") == set()
    assert find("日本語") == {s["jp"]}
    assert find("東京") == {s["jp"]}
    assert find("deploy", filters={"ticket": "T-1"}) == {s["red"], s["split"]}
    assert find("nothing-like-this") == set()


@pytest.mark.parametrize(
    "query",
    [
        '"', '""', 'foo"bar', '"deploy', 'deploy"', "*", "**", "*deploy", "-deploy", "deploy -", "deploy OR red",
        "OR", "AND", "NOT", "NEAR", "NEAR(deploy red)", "NEAR(deploy red, 2)", "deploy NEAR red", "title:red",
        "body:deploy", "{title body}:red", "^red", "(", ")", "(deploy", "+", ":", "'; DROP TABLE forum_events; --",
        "\x00deploy", "red\x00", "\u202edeploy", "🚀 deploy", "deploy\ttuesday\n", "\\", "%", "_", "a" * 2000,
        "\udcffdeploy",
    ],
)
def test_search_hostile_input_never_errors(reader: ForumReader, searchable: dict[str, str], query: str) -> None:
    threads, cursor = reader.search(query)
    assert cursor is None
    assert set(ids(threads)) <= set(searchable.values())


def test_search_hostile_input_matches_as_text(reader: ForumReader, searchable: dict[str, str]) -> None:
    s = searchable
    assert ids(reader.search('"deploy')[0]) and set(ids(reader.search('"deploy')[0])) == {s["red"], s["split"], s["jp"]}
    assert set(ids(reader.search("title:red")[0])) == set()  # "title red": no thread has both words
    assert set(ids(reader.search("-deploy")[0])) == {s["red"], s["split"], s["jp"]}  # not a negation
    assert set(ids(reader.search("deploy OR cafe")[0])) == set()  # OR is just a word
    assert set(ids(reader.search("cafe NEAR station")[0])) == {s["cafe"]}  # NEAR is just a word (it is there)
    assert set(ids(reader.search("NEAR(cafe station)")[0])) == set()  # "near cafe": the words, adjacent
    assert reader.search('"')[0] == [] and reader.search("***")[0] == []  # nothing searchable


def test_search_errors(reader: ForumReader) -> None:
    for query in ("", "   ", None, 3):
        with refused("invalid_filter") as r:
            reader.search(query)
        assert str(r.value) == "query is required"
    with refused("invalid_filter"):
        reader.search(" ".join(f"w{i}" for i in range(40)))
    with refused("invalid_filter"):
        reader.search("x", {"state": "bogus"})
    with refused("invalid_limit"):
        reader.search("x", limit=0)
    with refused("invalid_cursor"):
        reader.search("x", cursor="not a cursor")


def test_search_pagination_no_duplicates_no_gaps(reader: ForumReader, conn: sqlite3.Connection) -> None:
    # three batches of threads sharing one updated_at each: ties are broken by thread_id
    ev = ForumEvents(step=timedelta(0))
    for batch in range(3):
        ev.now = BASE_TIME + timedelta(minutes=batch)
        for i in range(9):
            ev.open(f"needle {batch}-{i}", "haystack", ticket="T-1" if i % 2 else "T-2")
    ev.now = BASE_TIME + timedelta(hours=1)
    ev.open("no match here", "nothing")
    ingest(conn, ev.take())
    everything = ids(reader.search("needle", limit=500)[0])
    assert len(everything) == 27
    assert len(set(everything)) == 27
    for limit in (1, 2, 5, 7, 9, 26, 27, 28):
        paged = all_pages(lambda c, n: reader.search("needle", cursor=c, limit=n), limit)
        assert paged == everything, limit
    filtered = all_pages(lambda c, n: reader.search("needle", {"ticket": "T-1"}, cursor=c, limit=n), 4)
    assert filtered == [t for t in everything if t in set(ids(reader.list_threads({"ticket": "T-1"}, limit=500)))]
    assert len(filtered) == 12
    # newest update first, thread_id descending within a tie
    views = reader.search("needle", limit=500)[0]
    keys = [(v.updated_at, v.thread_id) for v in views]
    assert keys == sorted(keys, reverse=True)


def test_cursor_round_trip_and_garbage() -> None:
    cursor = encode_thread_cursor("2026-01-01T00:00:00.000000Z", "fthr_abc")
    assert decode_thread_cursor(cursor) == ("2026-01-01T00:00:00.000000Z", "fthr_abc")
    assert all(ch.isalnum() or ch in "-_" for ch in cursor)
    wrong_shape = base64.urlsafe_b64encode(b'{"a": 1}').decode()
    wrong_version = base64.urlsafe_b64encode(b'[9, "x", "y"]').decode()
    empty_parts = base64.urlsafe_b64encode(b'[1, "", ""]').decode()
    for bad in ("", "!!!", "abc", "not a cursor", wrong_shape, wrong_version, empty_parts, cursor + "*", "x" * 5000, 7):
        with refused("invalid_cursor") as r:
            decode_thread_cursor(bad)  # type: ignore[arg-type]  # a bad cursor on purpose
        assert str(r.value) == "invalid cursor"
    assert parse_event_cursor(None) == 0 and parse_event_cursor("12") == 12 and parse_event_cursor(3) == 3
    for bad_event in (-1, "-1", "abc", "1.5", True, 2**64, "١٢"):
        with refused("invalid_cursor"):
            parse_event_cursor(bad_event)


# --- queues and seen markers ----------------------------------------------------------------


def test_unseen_queue_with_seen_markers(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    by_alice = ev.open("Agent asks", actor_type="agent", actor_name="alice").envelope.thread_id
    by_bob = ev.open("Bob asks", actor_type="human", actor_name="bob").envelope.thread_id
    ingest(conn, ev.take())

    def unseen(viewer_id: str = "bob", viewer_type: str = "human") -> list[str]:
        return ids(reader.queue("unseen", viewer_type, viewer_id)[0])

    assert unseen() == [by_alice]  # bob's own thread is not unseen for him
    assert unseen("carol") == [by_bob, by_alice]
    assert unseen("bob", "agent") == [by_bob, by_alice]  # same name, other viewer type: not him

    marker = mark_seen(conn, by_alice, "human", "bob")
    assert (marker.thread_id, marker.viewer_type, marker.viewer_id, marker.last_seen_event_sequence) == (
        by_alice, "human", "bob", 1,
    )
    assert unseen() == []
    ev.post(by_alice, "new info", actor_type="agent", actor_name="alice")
    ingest(conn, ev.take())
    assert unseen() == [by_alice]
    view = reader.get_thread(by_alice, Viewer("human", "bob"))
    assert view.is_unseen is True
    ev.post(by_alice, "thanks", actor_type="human", actor_name="bob")  # bob answers: authored by him
    ingest(conn, ev.take())
    assert unseen() == []
    assert reader.get_thread(by_alice, Viewer("human", "bob")).is_unseen is False

    # markers never move backwards
    latest = mark_seen(conn, by_alice, "human", "bob")
    assert latest.last_seen_event_sequence == 4
    older = mark_seen(conn, by_alice, "human", "bob", sequence=2)
    assert older.last_seen_event_sequence == 4 and older.seen_at == latest.seen_at
    assert mark_seen(conn, by_alice, "human", "bob", sequence=0).last_seen_event_sequence == 4
    assert mark_seen(conn, by_alice, "human", "bob", sequence=9).last_seen_event_sequence == 9

    # closed threads are never in the queue
    ev.close(by_bob, actor_type="operator", actor_name="op")
    ingest(conn, ev.take())
    assert by_bob not in unseen("carol")
    assert reader.get_thread(by_bob, Viewer("human", "carol")).is_unseen is True  # the flag itself stays


def test_mark_seen_errors(reader: ForumReader, conn: sqlite3.Connection) -> None:
    with pytest.raises(ThreadNotFound):
        mark_seen(conn, "fthr_nope", "human", "bob")
    ev = ForumEvents()
    tid = ev.open().envelope.thread_id
    ingest(conn, ev.take())
    for vtype, vid, seq in (("robot", "x", None), ("human", "", None), ("human", "bob", -1), ("human", "bob", "3"), ("human", "bob", True)):
        with refused("invalid_value"):
            mark_seen(conn, tid, vtype, vid, seq)
    assert conn.execute("SELECT count(*) FROM forum_thread_reads").fetchone()[0] == 0
    assert not conn.in_transaction


def test_the_reader_only_reads(reader: ForumReader) -> None:
    # Seen markers are a write: metawsm.forum.seen.mark_seen, through ForumService.mark_seen.
    assert not hasattr(reader, "mark_seen")


def test_unanswered_queue(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    asked = ev.open("Agent asks", actor_type="agent", actor_name="alice", ticket="T-1").envelope.thread_id
    human = ev.open("Human asks", actor_type="human", actor_name="bob", ticket="T-1").envelope.thread_id
    other = ev.open("Agent asks elsewhere", actor_type="agent", actor_name="zed", ticket="T-2").envelope.thread_id
    ingest(conn, ev.take())

    def unanswered(**filters: Any) -> list[str]:
        return ids(reader.queue("unanswered", "human", "bob", filters)[0])

    assert unanswered() == [other, asked]
    assert unanswered(ticket="T-1") == [asked]
    ev.post(asked, "status?", actor_type="system", actor_name="")
    ingest(conn, ev.take())
    assert unanswered() == [asked, other]  # still unanswered; newest update first
    ev.post(human, "I think...", actor_type="agent", actor_name="alice")
    ev.post(asked, "here you go", actor_type="operator", actor_name="op")
    ingest(conn, ev.take())
    assert unanswered() == [human, other]
    views = reader.queue("unanswered", "human", "bob")[0]
    assert all(v.is_unanswered is True and v.is_unseen is not None for v in views)
    ev.close(other)
    ingest(conn, ev.take())
    assert unanswered() == [human]
    assert reader.get_thread(other, Viewer("agent", "zed")).is_unanswered is True  # flag is post-based


def test_queue_pagination_and_errors(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents(step=timedelta(0))
    for i in range(23):
        if i % 5 == 0:
            ev.now += timedelta(seconds=1)
        ev.open(f"q{i}", actor_type="agent", actor_name="alice", ticket="T-1" if i % 3 else "T-2")
    ingest(conn, ev.take())
    for kind in ("unseen", "unanswered"):
        everything = ids(reader.queue(kind, "human", "bob", limit=500)[0])
        assert len(everything) == len(set(everything)) == 23
        for limit in (1, 4, 22, 23, 24):
            paged = all_pages(lambda c, n: reader.queue(kind, "human", "bob", cursor=c, limit=n), limit)
            assert paged == everything
        t1 = all_pages(lambda c, n: reader.queue(kind, "human", "bob", {"ticket": "T-1"}, cursor=c, limit=n), 3)
        assert len(t1) == 15 and set(t1) < set(everything)
    with refused("invalid_filter"):
        reader.queue("inbox", "human", "bob")
    with refused("invalid_filter"):
        reader.queue(None, "human", "bob")
    with refused("invalid_filter"):
        reader.queue("unseen", "robot", "bob")
    with refused("invalid_filter"):
        reader.queue("unseen", "human", None)
    with refused("invalid_limit"):
        reader.queue("unseen", "human", "bob", limit=501)
    with refused("invalid_cursor"):
        reader.queue("unseen", "human", "bob", cursor="zzz")
    assert reader.queue("unseen", "human", "bob", {"state": "closed"}) == ([], None)


# --- events ---------------------------------------------------------------------------------


def test_events_after_pagination(reader: ForumReader, conn: sqlite3.Connection) -> None:
    assert reader.events_after() == ([], 0)
    assert reader.latest_sequence() == 0
    ev = ForumEvents()
    a = ev.open(ticket="T-1", run_id="r1").envelope.thread_id
    b = ev.open(ticket="T-2", run_id="r2").envelope.thread_id
    for i in range(10):
        ev.post(a if i % 2 else b, f"p{i}")
    ingest(conn, ev.take())
    assert reader.latest_sequence() == 12
    events, cursor = reader.events_after(cursor=0, limit=5)
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5] and cursor == 5
    collected, cursor = [], 0
    while True:
        page, next_cursor = reader.events_after(cursor=cursor, limit=3)
        if not page:
            assert next_cursor == cursor
            break
        collected.extend(e.sequence for e in page)
        cursor = next_cursor
    assert collected == list(range(1, 13))
    t1, c1 = reader.events_after(ticket="T-1")
    assert {e.envelope.ticket for e in t1} == {"T-1"} and [e.sequence for e in t1] == [1, 4, 6, 8, 10, 12]
    assert c1 == 12
    r2, _ = reader.events_after(run_id="r2", cursor="5")
    assert [e.sequence for e in r2] == [7, 9, 11]
    assert reader.events_after(ticket="T-404", cursor=7) == ([], 7)
    assert reader.events_after(cursor=99) == ([], 99)
    with refused("invalid_cursor"):
        reader.events_after(cursor="-1")
    with refused("invalid_limit"):
        reader.events_after(limit=0)
    page = msgspec.json.decode(msgspec.json.encode(EventPage(events=t1[:1], next_cursor=1)))
    assert page["next_cursor"] == 1 and page["events"][0]["envelope"]["ticket"] == "T-1"
    latest = reader.latest_events(limit=2)
    assert [e.sequence for e in latest] == [12, 11]
    assert [e.sequence for e in reader.latest_events(limit=2, ticket="T-2")] == [11, 9]


# --- stats, control, pipeline ---------------------------------------------------------------


def test_stats_filters(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    a = ev.open(ticket="T-1", run_id="r1").envelope.thread_id
    ev.open(ticket="T-1", run_id="r1", priority="urgent")
    ev.open(ticket="T-1", run_id="r2")
    ev.open(ticket="T-2", run_id="r1")
    ev.close(a)
    ingest(conn, ev.take())
    everything = [(s.ticket, s.run_id, s.state, s.priority, s.thread_count) for s in reader.stats()]
    assert everything == [
        ("T-1", "r1", "new", "urgent", 1),
        ("T-1", "r1", "closed", "normal", 1),
        ("T-1", "r2", "new", "normal", 1),
        ("T-2", "r1", "new", "normal", 1),
    ]
    assert [(s.ticket, s.run_id) for s in reader.stats(ticket="T-1")] == [("T-1", "r1"), ("T-1", "r1"), ("T-1", "r2")]
    assert [(s.ticket, s.state) for s in reader.stats(run_id="r1")] == [("T-1", "new"), ("T-1", "closed"), ("T-2", "new")]
    assert [s.thread_count for s in reader.stats(ticket="T-1", run_id="r2")] == [1]
    assert reader.stats(ticket="T-404") == []
    encoded = msgspec.json.decode(msgspec.json.encode(reader.stats(ticket="T-2")))
    assert encoded == [{"ticket": "T-2", "run_id": "r1", "state": "new", "priority": "normal", "thread_count": 1}]


def test_control_state_and_threads(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    ev.signal("guidance_request", run_id="r1", agent_name="alice", ticket="T-1", question="Which DB?")
    ev.signal("completion", run_id="r1", agent_name="bob", ticket="T-1", summary="done")
    ev.signal("validation", run_id="r2", agent_name="alice", ticket="T-2", status="passed", done_criteria="green")
    ingest(conn, ev.take())
    rows = reader.control_state("r1")
    assert [(r.agent_name, r.pending_guidance, r.pending_question, r.completion_signalled) for r in rows] == [
        ("alice", True, "Which DB?", False), ("bob", False, "", True),
    ]
    assert [r.agent_name for r in reader.control_state("r1", "bob")] == ["bob"]
    assert len(reader.control_state()) == 3
    encoded = msgspec.json.decode(msgspec.json.encode(reader.control_state("r2")[0]))
    assert encoded["validation_status"] == "passed" and encoded["pending_guidance"] is False
    assert "pending_question" not in encoded
    threads = reader.control_threads()
    assert [(t.run_id, t.agent_name) for t in threads] == [("r1", "alice"), ("r1", "bob"), ("r2", "alice")]
    assert [t.agent_name for t in reader.control_threads(ticket="T-2")] == ["alice"]
    assert [t.agent_name for t in reader.control_threads(run_id="r1")] == ["alice", "bob"]
    control = reader.list_threads({"run_id": "r2"})
    assert [t.title for t in control] == ["Control: alice"]


def test_projection_checkpoints_and_lag(reader: ForumReader, conn: sqlite3.Connection) -> None:
    assert reader.projection_checkpoints() == dict.fromkeys(PROJECTION_NAMES, 0)
    assert reader.projection_lag() == dict.fromkeys(PROJECTION_NAMES, 0)
    ev = ForumEvents()
    tid = ev.open().envelope.thread_id
    ev.post(tid)
    ingest(conn, ev.take())
    assert reader.projection_lag() == dict.fromkeys(PROJECTION_NAMES, 0)
    ev.post(tid)
    ev.post(tid)
    ev.post(tid)
    events = ev.take()
    ingest(conn, events[:1], projections=[create_projection("thread_views")])
    write_log(conn, events[1:])
    assert reader.projection_checkpoints() == {"thread_views": 3, "thread_stats": 2, "queue_view": 2, "control_state": 2}
    assert reader.projection_lag() == {"thread_views": 2, "thread_stats": 3, "queue_view": 3, "control_state": 3}


def test_outbox_parked_and_debug_lists(database: Database, conn: sqlite3.Connection) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    reader = ForumReader(conn, now=lambda: now)
    empty = reader.outbox_stats()
    assert (empty.pending_count, empty.parked_count, empty.oldest_pending_at, empty.oldest_pending_age_seconds) == (0, 0, None, 0.0)
    ev = ForumEvents()
    ev.open(ticket="T-1", run_id="r1")
    ev.open(ticket="T-2")
    rows = [
        ("fmsg_1", "pending", now - timedelta(seconds=90), ev.events[0]),
        ("fmsg_2", "pending", now - timedelta(seconds=30), ev.events[1]),
        ("fmsg_3", "sent", now - timedelta(seconds=200), ev.events[0]),
        ("fmsg_4", "failed", now - timedelta(seconds=10), ev.events[1]),
        ("fmsg_5", "parked", now - timedelta(seconds=10), ev.events[1]),
        ("fmsg_6", "processing", now - timedelta(seconds=5), None),
    ]
    with write_transaction(conn):
        for message_id, status, at, event in rows:
            conn.execute(
                "INSERT INTO forum_outbox (message_id, topic, payload_json, status, created_at, updated_at)"
                " VALUES (?, 'forum.events.thread.opened', ?, ?, ?, ?)",
                (message_id, msgspec.json.encode(event).decode() if event else "not json", status, format_time(at), format_time(at)),
            )
        conn.execute(
            "INSERT INTO forum_parked_messages (message_id, topic, stream, payload_json, attempts, last_error, parked_at)"
            " VALUES ('fmsg_5', 't', 's', '{}', 5, 'boom', ?), ('fmsg_9', 't', 's', '{}', 5, 'bang', ?)",
            (format_time(now), format_time(now + timedelta(seconds=1))),
        )
        conn.execute(
            "INSERT INTO forum_parked_messages (message_id, topic, stream, payload_json, attempts, parked_at, replayed_at)"
            " VALUES ('fmsg_8', 't', 's', '{}', 5, ?, ?)",
            (format_time(now - timedelta(hours=1)), format_time(now)),
        )
    stats = reader.outbox_stats()
    assert (stats.pending_count, stats.processing_count, stats.failed_count, stats.sent_count) == (2, 1, 1, 1)
    assert stats.parked_count == 2  # fmsg_5 (outbox and parked table, once) + fmsg_9; fmsg_8 was replayed
    assert stats.oldest_pending_at == format_time(now - timedelta(seconds=90))
    assert stats.oldest_pending_age_seconds == 90.0
    assert [m.message_id for m in reader.latest_outbox(limit=3)] == ["fmsg_6", "fmsg_5", "fmsg_4"]
    assert [m.message_id for m in reader.latest_outbox(ticket="T-1")] == ["fmsg_3", "fmsg_1"]
    assert [m.message_id for m in reader.latest_outbox(run_id="r1")] == ["fmsg_3", "fmsg_1"]
    parked = reader.parked()
    assert [p.message_id for p in parked] == ["fmsg_9", "fmsg_5", "fmsg_8"]
    assert parked[2].replayed_at is not None and parked[0].replayed_at is None
    with refused("invalid_limit"):
        reader.parked(limit=0)


def test_reads_work_on_a_read_only_connection(database: Database, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open("Read only").envelope.thread_id
    ingest(conn, ev.take())
    ro = database.connect(read_only=True)
    try:
        reader = ForumReader(ro)
        assert ids(reader.list_threads()) == [tid]
        assert ids(reader.search("read")[0]) == [tid]
        assert reader.thread_detail(tid).thread.title == "Read only"
        assert reader.projection_lag() == dict.fromkeys(PROJECTION_NAMES, 0)
        assert not ro.in_transaction
    finally:
        ro.close()


def test_reader_joins_a_transaction_the_caller_opened(reader: ForumReader, conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    tid = ev.open().envelope.thread_id
    ingest(conn, ev.take())
    conn.execute("BEGIN")
    try:
        assert reader.thread_detail(tid).thread.thread_id == tid
        assert reader.projection_lag()["thread_views"] == 0
        assert conn.in_transaction
    finally:
        conn.execute("COMMIT")


def test_search_walk_and_all_matches_give_the_same_pages(
    reader: ForumReader, conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both ways of finding a page (docs/forum.md#search): same threads, same order, same cursors."""
    from metawsm.forum.reads import search as search_module

    ev = ForumEvents(step=timedelta(0))
    for batch in range(6):
        ev.now = BASE_TIME + timedelta(minutes=batch)
        for i in range(12):
            tid = ev.open(f"alpha {batch}-{i}", "common words here", ticket=f"T-{i % 3}").envelope.thread_id
            if i % 4 == 0:
                ev.post(tid, "beta appears in a later post")
            if i % 5 == 0:
                ev.change_state(tid, "triaged")  # updated_at moves, the posts do not
            if i % 7 == 0:
                ev.post(tid, "gamma alpha beta together")
    ev.now = BASE_TIME + timedelta(hours=1)
    ev.open("unrelated", "nothing to see")
    ingest(conn, ev.take())

    walked: list[bool] = []
    real_walk = search_module._walk

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = real_walk(*args, **kwargs)
        walked.append(result is not None)
        return result

    monkeypatch.setattr(search_module, "_walk", spy)
    viewer = {"viewer_type": "human", "viewer_id": "bob"}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("alpha", {}), ("beta", {}), ("alpha beta", {}), ("gamma", {}), ("common alpha", {"ticket": "T-1"}),
        ("beta", {"state": "triaged"}), ("alpha", viewer), ("nothing", {}), ("alp*", {}),
        ("gamma alpha", {}), ("alpha gamma common", {"ticket": "T-0"}), ("alp* beta", {}),
    ]
    for query, extra in cases:
        def fetch(c: str | None, n: int, q: str = query, x: dict[str, Any] = extra) -> tuple[list[ThreadView], Any]:
            v = Viewer.parse(x["viewer_type"], x["viewer_id"]) if "viewer_type" in x else None
            f = {k: val for k, val in x.items() if not k.startswith("viewer")}
            return reader.search(q, f, cursor=c, limit=n, viewer=v)

        monkeypatch.setattr(search_module, "COMMON", 10**9)  # always every match
        expected = {n: all_pages(fetch, n) for n in (1, 5, 50)}
        whole = reader.search(query, limit=500)[0]
        # walk to the end; give up early; in between; and "gamma" (12 posts) rare among common words
        for common, budget in ((1, 10**9), (1, 3), (1, 40), (20, 10**9), (20, 3)):
            monkeypatch.setattr(search_module, "COMMON", common)
            monkeypatch.setattr(search_module, "WALK_BUDGET", budget)
            for n, pages in expected.items():
                assert all_pages(fetch, n) == pages, (query, extra, common, budget, n)
            again = reader.search(query, limit=500)[0]
            assert [msgspec.to_builtins(t) for t in again] == [msgspec.to_builtins(t) for t in whole]
    assert any(walked) and not all(walked)  # both ways ran
