"""Search rows keyed by thread (migration 12): the migration of an existing index equals what the
thread_views projection writes, and the keys stay within their thread (docs/forum.md#search)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metawsm.forum.projections.thread_views import search_row_count, search_tokens
from metawsm.forum.reads import ForumReader
from metawsm.store import Database, write_transaction
from metawsm.store.migrations import migrate
from metawsm.store.schema_forum import SEARCH_POST_BITS
from support.forum_events import ForumEvents, ingest


@pytest.fixture
def conn(db_path: Path) -> Iterator[sqlite3.Connection]:
    db = Database(db_path)
    db.migrate()
    connection = db.connect()
    try:
        yield connection
    finally:
        connection.close()


def history(conn: sqlite3.Connection) -> None:
    ev = ForumEvents()
    first = ev.open("Deploy is red", "the deploy failed").envelope.thread_id
    second = ev.open("Café menu", "lunch at noon").envelope.thread_id
    ev.post(first, "rollback ready")
    ev.signal("guidance_request", run_id="run_1", agent_name="alice", ticket="T-9", question="which deploy?")
    ev.post(second, "deploy the menu too")
    ev.change_state(first, "triaged")
    ev.post(first, "third post")
    ev.signal("completion", run_id="run_1", agent_name="alice", ticket="T-9", summary="deployed")
    ingest(conn, ev.take())


def search_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """The index by rowid (contentless since migration 13: the tokens each row indexed)."""
    return [(search_row_count(conn),), *sorted(search_tokens(conn).items())]


def test_rowids_name_the_thread_and_the_post_number(conn: sqlite3.Connection) -> None:
    history(conn)
    keys = dict(conn.execute("SELECT thread_id, search_key FROM forum_search_threads").fetchall())
    assert len(keys) == 3
    for thread_id, key in keys.items():
        first = conn.execute("SELECT MIN(sequence) FROM forum_events WHERE thread_id = ?", (thread_id,)).fetchone()[0]
        assert key == first
        rowids = sorted(r for r in search_tokens(conn) if r >> SEARCH_POST_BITS == key)
        posts = conn.execute("SELECT posts_count FROM forum_thread_views WHERE thread_id = ?", (thread_id,)).fetchone()
        assert rowids == [(key << SEARCH_POST_BITS) + n for n in range(1, posts[0] + 1)]


def test_migration_12_rekeys_an_existing_index_as_the_projection_does(conn: sqlite3.Connection) -> None:
    history(conn)
    reader = ForumReader(conn)
    expected_rows = search_rows(conn)
    expected_keys = conn.execute("SELECT * FROM forum_search_threads ORDER BY 1").fetchall()
    queries = ("deploy", "menu", "rollback deploy", "dep*", "cafe", "which")
    expected_hits = {q: [t.thread_id for t in reader.search(q)[0]] for q in queries}
    assert all(expected_hits[q] for q in ("deploy", "menu", "rollback deploy", "dep*", "cafe"))
    # the index as migration 11 left it: a row per post (the title on the thread's first), rowids
    # in the order they were written; and migrations 13 and 14 undone (they run again after 12)
    with write_transaction(conn):
        conn.execute("DROP TABLE forum_search_threads")
        conn.execute("DROP TABLE forum_search")
        conn.execute(
            "CREATE VIRTUAL TABLE forum_search USING fts5(thread_id UNINDEXED, post_id UNINDEXED, title, body,"
            " tokenize = 'unicode61 remove_diacritics 2')"
        )
        conn.execute("INSERT INTO forum_search (thread_id, post_id, title, body)"
                     " SELECT p.thread_id, p.post_id, CASE WHEN e.sequence = (SELECT MIN(f.sequence)"
                     "  FROM forum_events f JOIN forum_posts q ON q.event_id = f.event_id"
                     "  WHERE q.thread_id = p.thread_id) THEN t.title ELSE '' END, p.body"
                     " FROM forum_posts p JOIN forum_events e ON e.event_id = p.event_id"
                     " JOIN forum_threads t ON t.thread_id = p.thread_id ORDER BY e.sequence")
        conn.execute("DROP INDEX ix_forum_thread_queue_view_unanswered")
        conn.execute("CREATE INDEX ix_forum_thread_queue_view_needs_answer_updated_at_thread_id"
                     " ON forum_thread_queue_view (needs_answer, updated_at, thread_id)")
        conn.execute("DROP INDEX ix_forum_thread_views_assigned")
        conn.execute("CREATE INDEX ix_forum_thread_views_assignee_name_updated_at_thread_id"
                     " ON forum_thread_views (assignee_name, updated_at, thread_id)")
        for prefix, columns in (("", ""), ("ticket_", "ticket, "), ("run_id_", "run_id, ")):  # and 14 undone
            conn.execute(f"CREATE INDEX ix_forum_thread_queue_view_{prefix}updated_at_thread_id"
                         f" ON forum_thread_queue_view ({columns}updated_at, thread_id)")
        conn.execute("DELETE FROM schema_migrations WHERE version IN (12, 13, 14)")
    assert migrate(conn) == [12, 13, 14]
    assert search_rows(conn) == expected_rows
    assert conn.execute("SELECT * FROM forum_search_threads ORDER BY 1").fetchall() == expected_keys
    assert {q: [t.thread_id for t in reader.search(q)[0]] for q in queries} == expected_hits
