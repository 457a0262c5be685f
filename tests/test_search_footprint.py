"""Migrations 13 and 14 (issue 19): a contentless search index, partial list indexes, and a
queue view without list indexes of its own.

``forum_search`` keeps no copy of the text, yet migrating an index written before finds the same
threads in the same order (cursors included), a rebuild gives the same index, and the list with
an assignee filter and the unanswered queue still walk an index, the new partial ones
(docs/forum.md#search).  Migration 14 leaves ``forum_thread_queue_view`` only its partial index:
the unseen queue walks ``forum_thread_views``' indexes in order, with or without a ticket or run
filter, and the unanswered queue still walks the partial one."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metawsm.forum.projections.thread_views import ThreadViewsProjection, search_row_count
from metawsm.forum.reads import ForumReader, Viewer, queues, threads
from metawsm.store import MIGRATIONS, open_connection, write_transaction
from metawsm.store.migrations import migrate
from metawsm.store.schema_forum import (
    ASSIGNED_INDEX,
    QUEUE_VIEW_LIST_INDEXES,
    SEARCH_POST_BITS,
    UNANSWERED_INDEX,
)
from support.forum_events import ForumEvents, apply_all, ingest

QUERIES = ("deploy", "menu", "rollback deploy", "dep*", "cafe", "which", "control", "nothing", "red deploy")


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    connection = open_connection(db_path)
    try:
        yield connection
    finally:
        connection.close()


def history(ev: ForumEvents) -> None:
    first = ev.open("Deploy is red", "the deploy failed", ticket="T-1").envelope.thread_id
    second = ev.open("Café menu", "lunch at noon", ticket="T-2", actor_type="human", actor_name="bob").envelope.thread_id
    ev.post(first, "rollback ready")
    ev.signal("guidance_request", run_id="run_1", agent_name="alice", ticket="T-9", question="which deploy?")
    ev.post(second, "deploy the menu too", actor_type="agent", actor_name="alice")
    ev.assign(first, "carol")
    ev.change_state(first, "triaged")
    for i in range(5):
        ev.open(f"Deploy {i} is red", f"deploy number {i}", ticket="T-3")
    ev.post(first, "third post")
    ev.signal("completion", run_id="run_1", agent_name="alice", ticket="T-9", summary="deployed")


def hits(reader: ForumReader) -> dict[str, list[str]]:
    return {q: [t.thread_id for t in reader.search(q, limit=500)[0]] for q in QUERIES}


def paged(reader: ForumReader, query: str) -> list[tuple[str, str | None]]:
    """Every page of one result, one thread a page: the thread and the cursor after it."""
    found: list[tuple[str, str | None]] = []
    cursor = None
    for _ in range(100):
        page, cursor = reader.search(query, cursor=cursor, limit=1)
        found += [(t.thread_id, cursor) for t in page]
        if cursor is None:
            return found
    raise AssertionError("pagination did not end")


def index_dump(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every token the index holds: (rowid, column, offset, term), from FTS5's own vocabulary."""
    conn.execute("DROP TABLE IF EXISTS temp.search_instances")
    conn.execute("CREATE VIRTUAL TABLE temp.search_instances USING fts5vocab(main, forum_search, instance)")
    try:
        return [tuple(r) for r in conn.execute(
            "SELECT doc, col, offset, term FROM temp.search_instances ORDER BY doc, col, offset")]
    finally:
        conn.execute("DROP TABLE temp.search_instances")


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def write_rows_as_before(conn: sqlite3.Connection) -> None:
    """The search rows as the projection wrote them before migration 13: thread and post ids
    stored, the title on the thread's first post (from the write model, as the events had them)."""
    numbered = (
        f"(k.search_key << {SEARCH_POST_BITS})"
        " + row_number() OVER (PARTITION BY p.thread_id ORDER BY e.sequence)"
    )
    with write_transaction(conn):
        conn.execute("DELETE FROM forum_search")
        conn.execute(
            "INSERT INTO forum_search (rowid, thread_id, post_id, title, body)"
            f" SELECT {numbered}, p.thread_id, p.post_id,"
            "  CASE WHEN row_number() OVER (PARTITION BY p.thread_id ORDER BY e.sequence) = 1"
            "  THEN t.title ELSE '' END, p.body"
            " FROM forum_posts p JOIN forum_events e ON e.event_id = p.event_id"
            " JOIN forum_threads t ON t.thread_id = p.thread_id"
            " JOIN forum_search_threads k ON k.thread_id = p.thread_id"
        )


def test_migration_13_keeps_every_search_hit(conn: sqlite3.Connection, tmp_path: Path) -> None:
    assert migrate(conn, MIGRATIONS[:12]) == list(range(1, 13))
    assert columns(conn, "forum_search") == ["thread_id", "post_id", "title", "body"]
    ev = ForumEvents()
    history(ev)
    events = ev.take()
    ingest(conn, events)
    write_rows_as_before(conn)
    posts = conn.execute("SELECT count(*) FROM forum_posts").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM forum_search WHERE thread_id IS NOT NULL").fetchone()[0] == posts == 12
    reader = ForumReader(conn)
    before = hits(reader)
    assert all(before[q] for q in QUERIES if q != "nothing") and before["nothing"] == []
    before_pages = {q: paged(reader, q) for q in ("deploy", "dep*", "red deploy")}

    assert migrate(conn) == [13, 14]

    assert columns(conn, "forum_search") == ["title", "body"]
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'forum_search'").fetchone()[0]
    assert "content = ''" in sql and "columnsize = 0" in sql
    shadows = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'forum_search%'")}
    assert "forum_search_content" not in shadows and "forum_search_docsize" not in shadows
    assert not any("contentless" in name for name in shadows)
    assert search_row_count(conn) == posts
    assert hits(reader) == before
    assert {q: paged(reader, q) for q in before_pages} == before_pages

    # and the migrated index is the one the projection writes on a new database
    fresh = open_connection(tmp_path / "fresh.db")
    try:
        migrate(fresh)
        ingest(fresh, events)
        assert index_dump(conn) == index_dump(fresh)
        assert hits(ForumReader(fresh)) == before
    finally:
        fresh.close()


def test_rebuild_gives_the_same_search(conn: sqlite3.Connection) -> None:
    migrate(conn)
    ev = ForumEvents()
    history(ev)
    events = ev.take()
    ingest(conn, events)
    reader = ForumReader(conn)
    before, dump = hits(reader), index_dump(conn)
    posts = conn.execute("SELECT count(*) FROM forum_posts").fetchone()[0]
    assert search_row_count(conn) == posts == 12
    assert before["deploy"] and dump

    with write_transaction(conn):
        ThreadViewsProjection().clear(conn)
    assert search_row_count(conn) == 0 and index_dump(conn) == []
    assert hits(reader) == {q: [] for q in QUERIES}
    apply_all(conn, [ThreadViewsProjection()], events)

    assert search_row_count(conn) == posts
    assert index_dump(conn) == dump
    assert hits(reader) == before


def test_search_row_count_reads_large_totals(conn: sqlite3.Connection) -> None:
    migrate(conn)
    with write_transaction(conn):
        conn.executemany("INSERT INTO forum_search (rowid, title, body) VALUES (?, '', 'x')",
                         [((1 << SEARCH_POST_BITS) + n,) for n in range(1, 20_001)])
    assert search_row_count(conn) == 20_000


def plan(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch, module: Any, read: Any) -> list[str]:
    """The query plan of the statement ``read`` runs through ``module.rows``."""
    seen: list[tuple[str, Any]] = []
    real = module.rows

    def capture(c: sqlite3.Connection, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        seen.append((sql, params))
        return real(c, sql, params)

    monkeypatch.setattr(module, "rows", capture)
    read()
    monkeypatch.setattr(module, "rows", real)
    assert len(seen) == 1
    sql, params = seen[0]
    return [str(r[3]) for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


def walks_index(lines: list[str], alias: str, index: str) -> bool:
    own = [line for line in lines if line.split(" ")[1:2] == [alias]]
    return bool(own) and all(f"USING INDEX {index}" in line or f"USING COVERING INDEX {index}" in line
                             for line in own)


def test_assignee_list_and_unanswered_queue_walk_the_partial_indexes(
    conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(conn)
    ev = ForumEvents()
    history(ev)
    ingest(conn, ev.take())
    reader = ForumReader(conn)
    assert [t.thread_id for t in reader.list_threads({"assignee": "carol"})] == [
        conn.execute("SELECT thread_id FROM forum_thread_views WHERE title = 'Deploy is red'").fetchone()[0]
    ]
    assert reader.list_threads({"assignee": "nobody"}) == []

    listed = plan(conn, monkeypatch, threads, lambda: reader.list_threads({"assignee": "carol"}))
    assert walks_index(listed, "v", ASSIGNED_INDEX), listed
    with_viewer = plan(conn, monkeypatch, threads,
                       lambda: reader.list_threads({"assignee": "carol"}, viewer=Viewer("human", "bob")))
    assert walks_index(with_viewer, "v", ASSIGNED_INDEX), with_viewer
    unanswered = plan(conn, monkeypatch, queues, lambda: reader.queue("unanswered", "human", "bob"))
    assert walks_index(unanswered, "q", UNANSWERED_INDEX), unanswered
    for lines in (listed, with_viewer, unanswered):
        assert not any("TEMP B-TREE" in line for line in lines), lines
        assert not any(line.startswith("SCAN") and "INDEX" not in line for line in lines), lines

    # the indexes hold only the rows a filter can find
    assert conn.execute(f"SELECT count(*) FROM forum_thread_views INDEXED BY {ASSIGNED_INDEX}"
                        " WHERE assignee_name <> ''").fetchone()[0] == 1
    needing = conn.execute("SELECT count(*) FROM forum_thread_queue_view WHERE needs_answer = 1").fetchone()[0]
    assert 0 < needing < conn.execute("SELECT count(*) FROM forum_thread_queue_view").fetchone()[0]


def queue_view_indexes(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'forum_thread_queue_view'")}


def schema(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name <> 'schema_migrations' ORDER BY name")]


def test_migration_14_leaves_the_queue_view_only_its_partial_index(conn: sqlite3.Connection, tmp_path: Path) -> None:
    assert migrate(conn, MIGRATIONS[:13]) == list(range(1, 14))
    assert queue_view_indexes(conn) >= set(QUEUE_VIEW_LIST_INDEXES)
    ev = ForumEvents()
    history(ev)
    events = ev.take()
    ingest(conn, events)
    reader = ForumReader(conn)
    viewers = (("human", "bob"), ("agent", "alice"), ("human", "carol"))
    cases = [(kind, filters, viewer) for kind in ("unseen", "unanswered") for viewer in viewers
             for filters in ({}, {"ticket": "T-3"}, {"ticket": "T-9"}, {"run_id": "run_1"})]

    def queues_paged() -> dict[str, list[tuple[list[tuple[Any, ...]], str | None]]]:
        found = {}
        for kind, filters, viewer in cases:
            pages, cursor = [], None
            for _ in range(100):
                page, cursor = reader.queue(kind, *viewer, filters, cursor=cursor, limit=2)
                pages.append(([(t.thread_id, t.is_unseen, t.is_unanswered) for t in page], cursor))
                if cursor is None:
                    break
            found[f"{kind} {filters} {viewer}"] = pages
        return found

    before = queues_paged()
    assert any(len(pages) > 1 for pages in before.values())

    assert migrate(conn) == [14]

    assert queue_view_indexes(conn) == {UNANSWERED_INDEX, "sqlite_autoindex_forum_thread_queue_view_1"}
    assert queues_paged() == before  # same threads, flags, order and cursors
    fresh = open_connection(tmp_path / "fresh.db")
    try:
        migrate(fresh)
        assert schema(fresh) == schema(conn)  # a new database ends as an upgraded one
    finally:
        fresh.close()


def test_unseen_queue_walks_the_thread_views_indexes(conn: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    migrate(conn)
    ev = ForumEvents()
    for i in range(300):
        ev.open(f"Thread {i}", "body", ticket=f"T-{i % 7}", run_id=f"run_{i % 5}" if i % 2 else "",
                actor_type="agent" if i % 3 else "human", actor_name="alice" if i % 3 else "bob")
    for i, thread_id in enumerate(list(ev.threads)):
        if i % 4 == 0:
            ev.post(thread_id, "seen to", actor_type="human", actor_name="carol")
        if i % 10 == 0:
            ev.close(thread_id)
    ingest(conn, ev.take())
    reader = ForumReader(conn)
    page, cursor = reader.queue("unseen", "human", "bob", limit=20)
    assert len(page) == 20 and cursor is not None

    for filters, index in (
        ({}, "ix_forum_thread_views_updated_at_thread_id"),
        ({"ticket": "T-3"}, "ix_forum_thread_views_ticket_updated_at_thread_id"),
        ({"run_id": "run_1"}, "ix_forum_thread_views_run_id_updated_at_thread_id"),
    ):
        for after in (None, cursor):
            lines = plan(conn, monkeypatch, queues,
                         lambda f=filters, c=after: reader.queue("unseen", "human", "bob", f, cursor=c, limit=20))
            assert lines[0].split(" ")[1] == "v", lines  # driven from v, q joined per row
            assert walks_index(lines, "v", index), lines
            assert not any("TEMP B-TREE" in line for line in lines), lines
            assert not any(line.startswith("SCAN") and "INDEX" not in line for line in lines), lines
            assert not any("ix_forum_thread_queue_view" in line for line in lines), lines
    for filters in ({}, {"ticket": "T-3"}, {"run_id": "run_1"}):
        lines = plan(conn, monkeypatch, queues, lambda f=filters: reader.queue("unanswered", "human", "bob", f))
        assert walks_index(lines, "q", UNANSWERED_INDEX), lines
        assert not any("TEMP B-TREE" in line for line in lines), lines
        assert not any(line.startswith("SCAN") and "INDEX" not in line for line in lines), lines
