"""The SQLite store against real database files: connection rules, transactions,
migrations (including two processes racing), the table contract and concurrent writers."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlite_utils

from metawsm.clock import now_text
from metawsm.store import (
    MIGRATIONS,
    Database,
    Migration,
    StoreError,
    current_version,
    migrate,
    open_connection,
    read_transaction,
    write_transaction,
)
from metawsm.store.schema_forum import ALL_TABLES, PROJECTION_TABLES, SEARCH_POST_BITS, next_event_sequence
from metawsm.store.schema_runs import TABLES as RUN_TABLES

# The contract, written out independently of the schema modules (docs/store.md).
CONTRACT: dict[str, set[str]] = {
    "forum_threads": {
        "thread_id", "ticket", "run_id", "agent_name", "title", "state", "priority",
        "assignee_type", "assignee_name", "opened_by_type", "opened_by_name", "is_control",
        "content_hash", "version", "opened_at", "updated_at", "closed_at",
    },
    "forum_posts": {"post_id", "thread_id", "event_id", "author_type", "author_name", "body", "created_at"},
    "forum_assignments": {
        "id", "thread_id", "event_id", "assignee_type", "assignee_name", "assignment_note",
        "assigned_by_type", "assigned_by_name", "assigned_at",
    },
    "forum_state_transitions": {
        "id", "thread_id", "event_id", "from_state", "to_state", "actor_type", "actor_name", "changed_at",
    },
    "forum_control_threads": {"run_id", "agent_name", "thread_id", "ticket", "created_at"},
    "forum_events": {
        "sequence", "event_id", "event_type", "event_version", "occurred_at", "thread_id", "run_id",
        "ticket", "agent_name", "actor_type", "actor_name", "correlation_id", "causation_id",
        "payload_json",
    },
    "forum_outbox": {
        "id", "message_id", "topic", "message_key", "payload_json", "status", "attempt_count",
        "last_error", "created_at", "updated_at", "sent_at",
    },
    "forum_command_results": {
        "event_id", "command_type", "thread_id", "status", "error_code", "error_message",
        "sequence", "decided_at",
    },
    "forum_parked_messages": {
        "message_id", "topic", "stream", "stream_entry_id", "payload_json", "attempts",
        "last_error", "parked_at", "replayed_at",
    },
    "forum_thread_views": {
        "thread_id", "ticket", "run_id", "agent_name", "title", "state", "priority",
        "assignee_type", "assignee_name", "opened_by_type", "opened_by_name", "is_control",
        "posts_count", "last_post_at", "last_post_by_type", "last_post_by_name",
        "last_event_sequence", "last_actor_type", "opened_at", "updated_at", "closed_at",
    },
    "forum_thread_stats": {"ticket", "run_id", "state", "priority", "thread_count"},
    "forum_thread_queue_view": {
        "thread_id", "ticket", "run_id", "agent_name", "state", "priority", "assignee_name",
        "last_event_sequence", "last_actor_type", "needs_answer", "updated_at",
    },
    "forum_thread_reads": {"thread_id", "viewer_type", "viewer_id", "last_seen_event_sequence", "seen_at"},
    "forum_control_state": {
        "run_id", "agent_name", "ticket", "thread_id", "pending_guidance", "pending_question",
        "pending_context", "pending_event_id", "completion_signalled", "completion_summary",
        "validation_status", "validation_done_criteria", "last_signal_at", "last_event_sequence",
    },
    "forum_search": {"title", "body"},  # contentless FTS5 since migration 13; the rowid says the thread
    "forum_search_threads": {"search_key", "thread_id"},
    "forum_projection_events": {"projection_name", "event_id", "applied_at"},
    "forum_projection_checkpoints": {"projection_name", "last_sequence", "updated_at"},
    "schema_migrations": {"version", "name", "applied_at"},
    "runs": {
        "run_id", "mode", "status", "tickets_json", "repos_json", "spec_json", "error",
        "created_at", "updated_at",
    },
    "run_steps": {
        "id", "run_id", "ordinal", "ticket", "name", "status", "attempts", "error",
        "started_at", "finished_at",
    },
    "run_agents": {
        "run_id", "agent_name", "workspace", "session_name", "tmux_socket", "workspace_path",
        "status", "health", "pane_pid", "restarts_used", "last_activity_at", "last_progress_at",
        "last_error", "updated_at",
    },
    "run_briefs": {
        "run_id", "ticket", "goal", "scope", "done_criteria", "constraints", "merge_intent",
        "qa_json", "created_at",
    },
    "events": {"id", "run_id", "at", "kind", "from_status", "to_status", "message"},
    "doc_sync_states": {"run_id", "ticket", "workspace", "status", "revision", "updated_at", "error"},
    "agent_tokens": {"token_sha256", "run_id", "ticket", "agent_name", "created_at", "revoked_at"},
    "api_idempotency_keys": {
        "caller", "idempotency_key", "fingerprint", "method", "path", "thread_id", "event_id", "run_id",
        "response_status", "response_body", "created_at", "answered_at",
    },
    "forum_marks": {"name", "value", "updated_at"},
}

PRIMARY_KEYS: dict[str, list[str]] = {
    "forum_threads": ["thread_id"],
    "forum_posts": ["post_id"],
    "forum_events": ["sequence"],
    "forum_outbox": ["id"],
    "forum_control_threads": ["run_id", "agent_name"],
    "forum_command_results": ["event_id"],
    "forum_parked_messages": ["message_id"],
    "forum_thread_stats": ["ticket", "run_id", "state", "priority"],
    "forum_thread_reads": ["thread_id", "viewer_type", "viewer_id"],
    "forum_control_state": ["run_id", "agent_name"],
    "forum_projection_events": ["projection_name", "event_id"],
    "forum_projection_checkpoints": ["projection_name"],
    "schema_migrations": ["version"],
    "runs": ["run_id"],
    "run_agents": ["run_id", "agent_name", "workspace"],
    "run_briefs": ["run_id"],
    "doc_sync_states": ["run_id", "ticket", "workspace"],
    "agent_tokens": ["token_sha256"],
    "api_idempotency_keys": ["caller", "idempotency_key"],
    "forum_marks": ["name"],
}

RUNBOOK_QUERIES = (
    "select status,count(*) from forum_outbox group by status;",
    "select sequence,event_type,thread_id,occurred_at from forum_events order by sequence desc limit 20;",
    "select projection_name,count(*) from forum_projection_events group by projection_name;",
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "metawsm.db"


@pytest.fixture
def migrated(db_path: Path) -> Path:
    Database(db_path).migrate()
    return db_path


def _insert_thread(conn: sqlite3.Connection, thread_id: str = "fthr_1") -> None:
    now = now_text()
    conn.execute(
        "INSERT INTO forum_threads (thread_id, ticket, title, state, priority, opened_by_type,"
        " opened_at, updated_at) VALUES (?, 'T-1', 'Title', 'new', 'normal', 'agent', ?, ?)",
        (thread_id, now, now),
    )


def _append_event(conn: sqlite3.Connection, event_id: str, thread_id: str = "fthr_1") -> int:
    sequence = next_event_sequence(conn)
    conn.execute(
        "INSERT INTO forum_events (sequence, event_id, event_type, occurred_at, thread_id, ticket,"
        " actor_type, correlation_id, payload_json) VALUES (?, ?, 'forum.post.added', ?, ?, 'T-1',"
        " 'agent', ?, '{}')",
        (sequence, event_id, now_text(), thread_id, event_id),
    )
    return sequence


# --- connections ----------------------------------------------------------------------------


def test_connection_settings(db_path: Path) -> None:
    conn = open_connection(db_path)
    try:
        assert db_path.parent.is_dir()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.isolation_level is None
        assert conn.row_factory is sqlite3.Row
    finally:
        conn.close()
    normal = open_connection(db_path, synchronous="normal")
    try:
        assert normal.execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        normal.close()


def test_connection_is_bound_to_its_thread(db_path: Path) -> None:
    conn = open_connection(db_path)
    errors: list[BaseException] = []

    def use() -> None:
        try:
            conn.execute("SELECT 1")
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            errors.append(exc)

    worker = threading.Thread(target=use)
    worker.start()
    worker.join()
    conn.close()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)


def test_unknown_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be one of"):
        open_connection(db_path, synchronous="sometimes")


def test_unopenable_paths_raise_store_error_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(StoreError) as under_file:
        open_connection(blocker / "metawsm.db")
    assert str(blocker) in str(under_file.value)
    assert under_file.value.path == str(blocker / "metawsm.db")

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not an sqlite database, just text" * 100)
    with pytest.raises(StoreError, match="not a database") as not_db:
        open_connection(garbage)
    assert str(not_db.value).startswith(f"cannot open database {garbage}: ")

    with pytest.raises(StoreError):
        open_connection(tmp_path / "missing.db", read_only=True)


def test_read_only_connection_reads_but_cannot_write(migrated: Path) -> None:
    conn = open_connection(migrated, read_only=True)
    try:
        assert current_version(conn) == len(MIGRATIONS)
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("DELETE FROM forum_outbox")
    finally:
        conn.close()


# --- transactions ---------------------------------------------------------------------------


def test_write_transaction_commits(migrated: Path) -> None:
    conn = open_connection(migrated)
    with write_transaction(conn):
        _insert_thread(conn)
    other = open_connection(migrated)
    assert other.execute("SELECT count(*) FROM forum_threads").fetchone()[0] == 1
    assert not conn.in_transaction
    conn.close()
    other.close()


@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_write_transaction_rolls_back_and_reraises(migrated: Path, error: BaseException) -> None:
    conn = open_connection(migrated)
    with pytest.raises(type(error)):
        with write_transaction(conn):
            _insert_thread(conn)
            raise error
    assert not conn.in_transaction
    assert conn.execute("SELECT count(*) FROM forum_threads").fetchone()[0] == 0
    conn.close()


def test_write_transaction_takes_the_write_lock_up_front(migrated: Path) -> None:
    conn = open_connection(migrated)
    other = open_connection(migrated)
    other.execute("PRAGMA busy_timeout = 0")
    with write_transaction(conn):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    conn.close()
    other.close()


def test_transactions_do_not_nest(migrated: Path) -> None:
    conn = open_connection(migrated)
    with write_transaction(conn):
        with pytest.raises(RuntimeError, match="already has an open transaction"):
            with write_transaction(conn):
                pass
    conn.close()


def test_read_transaction_sees_one_snapshot(migrated: Path) -> None:
    reader = open_connection(migrated)
    writer = open_connection(migrated)
    with read_transaction(reader):
        before = reader.execute("SELECT count(*) FROM forum_threads").fetchone()[0]
        with write_transaction(writer):
            _insert_thread(writer)
        during = reader.execute("SELECT count(*) FROM forum_threads").fetchone()[0]
    after = reader.execute("SELECT count(*) FROM forum_threads").fetchone()[0]
    assert (before, during, after) == (0, 0, 1)
    reader.close()
    writer.close()


# --- migrations -----------------------------------------------------------------------------


def test_migrate_is_idempotent(db_path: Path) -> None:
    conn = open_connection(db_path)
    assert current_version(conn) == 0
    assert migrate(conn) == [m.version for m in MIGRATIONS]
    assert migrate(conn) == []
    assert current_version(conn) == len(MIGRATIONS)
    rows = conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version").fetchall()
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
    assert all(r["applied_at"].endswith("Z") for r in rows)
    conn.close()
    assert Database(db_path).migrate() == []


def test_upgrading_an_older_database_applies_only_what_is_missing(db_path: Path) -> None:
    conn = open_connection(db_path)
    assert migrate(conn, MIGRATIONS[:1]) == [1]
    names = set(sqlite_utils.Database(conn).table_names())
    assert "forum_threads" in names and "runs" not in names
    assert migrate(conn) == [m.version for m in MIGRATIONS[1:]]
    assert {*RUN_TABLES, "agent_tokens", "api_idempotency_keys", "forum_marks"} <= set(
        sqlite_utils.Database(conn).table_names())
    assert current_version(conn) == len(MIGRATIONS)
    conn.close()


def test_a_failing_migration_leaves_nothing_behind(migrated: Path) -> None:
    def half_done(db: sqlite_utils.Database) -> None:
        db.create_table("half_done", {"id": int}, pk="id")
        raise RuntimeError("disk on fire")

    broken = (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken", half_done))
    conn = open_connection(migrated)
    with pytest.raises(RuntimeError, match="disk on fire"):
        migrate(conn, broken)
    assert "half_done" not in sqlite_utils.Database(conn).table_names()
    assert current_version(conn) == len(MIGRATIONS)
    assert not conn.in_transaction
    conn.close()


def test_a_migration_may_not_commit_by_itself(migrated: Path) -> None:
    def commits(db: sqlite_utils.Database) -> None:
        db.conn.execute("CREATE TABLE sneaky (id INTEGER)")
        db.conn.execute("COMMIT")

    conn = open_connection(migrated)
    with pytest.raises(RuntimeError, match="ended the transaction itself"):
        migrate(conn, (*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "commits", commits)))
    assert current_version(conn) == len(MIGRATIONS)
    conn.close()


def test_database_handle_opens_configured_connections(db_path: Path) -> None:
    handle = Database(str(db_path), synchronous="normal")
    assert handle == Database(db_path, "NORMAL") and handle.path == db_path
    assert handle.migrate() == [m.version for m in MIGRATIONS]
    conn = handle.connect()
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    conn.close()


def test_a_database_from_a_newer_metawsm_is_refused(migrated: Path) -> None:
    conn = open_connection(migrated)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', ?)", (now_text(),))
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        migrate(conn)
    conn.close()


def test_migration_numbers_must_be_contiguous(db_path: Path) -> None:
    conn = open_connection(db_path)
    with pytest.raises(ValueError, match="without gaps"):
        migrate(conn, (MIGRATIONS[0], Migration(3, "skips two", MIGRATIONS[1].apply)))
    conn.close()


_MIGRATE_SCRIPT = """
import json, sys, time
from metawsm.store import Database
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(json.dumps(Database(sys.argv[1]).migrate()))
"""


def test_concurrent_migrate_from_several_processes(db_path: Path) -> None:
    start = time.time() + 1.5  # let every interpreter boot, then race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_SCRIPT, str(db_path), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    applied: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        applied.extend(json.loads(out))
    assert sorted(applied) == [m.version for m in MIGRATIONS]  # each applied exactly once
    conn = open_connection(db_path)
    rows = conn.execute("SELECT version, count(*) FROM schema_migrations GROUP BY version").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(m.version, 1) for m in MIGRATIONS]
    conn.close()


# --- the table contract ---------------------------------------------------------------------


def test_every_contract_table_and_column_exists(migrated: Path) -> None:
    conn = open_connection(migrated)
    db = sqlite_utils.Database(conn)
    tables = set(db.table_names())
    assert set(CONTRACT) <= tables
    assert set(ALL_TABLES) | set(RUN_TABLES) <= tables
    for table, columns in CONTRACT.items():
        assert set(db[table].columns_dict) == columns, table
    for table, pks in PRIMARY_KEYS.items():
        assert db[table].pks == pks, table
    conn.close()


def test_declared_indexes_and_integer_sequence(migrated: Path) -> None:
    conn = open_connection(migrated)
    db = sqlite_utils.Database(conn)

    def index_columns(table: str) -> set[tuple[tuple[str, ...], bool]]:
        return {(tuple(ix.columns), bool(ix.unique)) for ix in db[table].indexes}

    events = index_columns("forum_events")
    for wanted in (("ticket", "sequence"), ("run_id", "sequence"), ("thread_id", "sequence")):
        assert (wanted, False) in events
    assert (("event_id",), True) in events
    assert ((("status", "id"), False)) in index_columns("forum_outbox")
    assert ((("thread_id", "created_at"), False)) in index_columns("forum_posts")
    assert ((("run_id", "ordinal"), True)) in index_columns("run_steps")
    assert ((("run_id", "id"), False)) in index_columns("events")
    assert ((("thread_id",), True)) in index_columns("forum_control_threads")
    assert ((("created_at",), False)) in index_columns("api_idempotency_keys")  # the expiry sweep
    schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'forum_events'").fetchone()[0]
    assert '"sequence" INTEGER PRIMARY KEY' in schema and "AUTOINCREMENT" not in schema.upper()
    conn.close()


def test_runbook_queries_run_verbatim(migrated: Path) -> None:
    conn = open_connection(migrated)
    now = now_text()
    with write_transaction(conn):
        _insert_thread(conn)
        _append_event(conn, "fevt_1")
        conn.execute(
            "INSERT INTO forum_outbox (message_id, topic, payload_json, created_at, updated_at)"
            " VALUES ('fmsg_1', 'forum.events.post.added', '{}', ?, ?)",
            (now, now),
        )
        conn.execute(
            "INSERT INTO forum_projection_events VALUES ('thread_views', 'fevt_1', ?)", (now,)
        )
    results = [conn.execute(query).fetchall() for query in RUNBOOK_QUERIES]
    assert [tuple(r) for r in results[0]] == [("pending", 1)]
    assert [tuple(r)[:3] for r in results[1]] == [(1, "forum.post.added", "fthr_1")]
    assert [tuple(r) for r in results[2]] == [("thread_views", 1)]
    conn.close()
    # and through the sqlite3 command-line shell, as the runbook runs them, when installed
    shell = shutil.which("sqlite3")
    if shell is not None:
        for query in RUNBOOK_QUERIES:
            done = subprocess.run([shell, str(migrated), query], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr


def test_fts5_search_accepts_inserts_and_matches(migrated: Path) -> None:
    conn = open_connection(migrated)
    first, second = (1 << SEARCH_POST_BITS) + 1, (2 << SEARCH_POST_BITS) + 1  # thread keys 1 and 2
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO forum_search (rowid, title, body) VALUES (?, ?, ?)",
            (first, "Build is RED", "The café deploy failed on Tuesday"),
        )
        conn.execute(
            "INSERT INTO forum_search (rowid, title, body) VALUES (?, ?, ?)",
            (second, "Unrelated", "nothing to see"),
        )
    hits = conn.execute("SELECT rowid FROM forum_search WHERE forum_search MATCH ?", ("cafe",)).fetchall()
    assert [h[0] for h in hits] == [first]
    by_title = conn.execute("SELECT rowid FROM forum_search WHERE forum_search MATCH 'title:red'").fetchall()
    assert [h[0] for h in by_title] == [first]
    # contentless (migration 13): the text is indexed, not stored
    assert [tuple(r) for r in conn.execute(
        "SELECT title, body FROM forum_search WHERE forum_search MATCH 'cafe'")] == [(None, None)]
    conn.close()


def test_write_model_children_need_their_thread(migrated: Path) -> None:
    conn = open_connection(migrated)
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with write_transaction(conn):
            conn.execute(
                "INSERT INTO forum_posts (post_id, thread_id, event_id, author_type, body, created_at)"
                " VALUES ('fpst_1', 'fthr_missing', 'fevt_1', 'agent', 'hi', ?)",
                (now_text(),),
            )
    conn.close()


def test_projection_tables_are_declared(migrated: Path) -> None:
    conn = open_connection(migrated)
    names = set(sqlite_utils.Database(conn).table_names())
    assert {t for tables in PROJECTION_TABLES.values() for t in tables} <= names
    assert "forum_thread_reads" not in {t for tables in PROJECTION_TABLES.values() for t in tables}
    conn.close()


# --- concurrency ----------------------------------------------------------------------------


def test_concurrent_writer_threads_never_see_database_is_locked(migrated: Path) -> None:
    setup = open_connection(migrated)
    with write_transaction(setup):
        _insert_thread(setup)
    setup.close()

    writers, per_writer = 4, 150
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(worker: int) -> None:
        conn = open_connection(migrated)  # each thread owns its connection
        try:
            barrier.wait()
            for i in range(per_writer):
                with write_transaction(conn):
                    # read-then-write inside one transaction: the pattern that would hit
                    # SQLITE_BUSY_SNAPSHOT without BEGIN IMMEDIATE
                    _append_event(conn, f"fevt_{worker}_{i}")
                    now = now_text()
                    conn.execute(
                        "INSERT INTO forum_outbox (message_id, topic, payload_json, created_at, updated_at)"
                        " VALUES (?, 'forum.events.post.added', '{}', ?, ?)",
                        (f"fmsg_{worker}_{i}", now, now),
                    )
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    conn = open_connection(migrated)
    total = writers * per_writer
    sequences = [r[0] for r in conn.execute("SELECT sequence FROM forum_events ORDER BY sequence")]
    assert sequences == list(range(1, total + 1))  # gap-free
    assert conn.execute("SELECT count(*) FROM forum_outbox").fetchone()[0] == total
    conn.close()
