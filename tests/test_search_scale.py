"""Search rows keyed by thread (migration 12): the migration of an existing index equals what the
thread_views projection writes, and the keys stay within their thread (docs/forum.md#search)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
    return conn.execute("SELECT rowid, thread_id, post_id, title, body FROM forum_search ORDER BY rowid").fetchall()


def test_rowids_name_the_thread_and_the_post_number(conn: sqlite3.Connection) -> None:
    history(conn)
    keys = dict(conn.execute("SELECT thread_id, search_key FROM forum_search_threads").fetchall())
    assert len(keys) == 3
    for thread_id, key in keys.items():
        first = conn.execute("SELECT MIN(sequence) FROM forum_events WHERE thread_id = ?", (thread_id,)).fetchone()[0]
        assert key == first
        rowids = [r[0] for r in conn.execute(
            "SELECT rowid FROM forum_search WHERE thread_id = ? ORDER BY rowid", (thread_id,))]
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
    # the index as migration 11 left it: the same rows, rowids in the order they were written
    with write_transaction(conn):
        conn.execute("DROP TABLE forum_search_threads")
        conn.execute("ALTER TABLE forum_search RENAME TO forum_search_keyed_old")
        conn.execute(
            "CREATE VIRTUAL TABLE forum_search USING fts5(thread_id UNINDEXED, post_id UNINDEXED, title, body,"
            " tokenize = 'unicode61 remove_diacritics 2')"
        )
        conn.execute("INSERT INTO forum_search (thread_id, post_id, title, body)"
                     " SELECT thread_id, post_id, title, body FROM forum_search_keyed_old ORDER BY"
                     " (SELECT e.sequence FROM forum_events e JOIN forum_posts p ON p.event_id = e.event_id"
                     "  WHERE p.post_id = forum_search_keyed_old.post_id)")
        conn.execute("DROP TABLE forum_search_keyed_old")
        conn.execute("DELETE FROM schema_migrations WHERE version = 12")
    assert migrate(conn) == [12]
    assert search_rows(conn) == expected_rows
    assert conn.execute("SELECT * FROM forum_search_threads ORDER BY 1").fetchall() == expected_keys
    assert {q: [t.thread_id for t in reader.search(q)[0]] for q in queries} == expected_hits
