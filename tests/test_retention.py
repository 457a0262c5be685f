"""Retention (issue 15, item 5): finished history is pruned, nothing unapplied ever is, and start-up
and reconcile are bounded by the persisted decided floor instead of the whole history.

* the outbox sweep's choice on a real SQLite file, row by row: unsent rows, undecided commands,
  parked commands, replayed-but-undecided commands, events some projection has not applied, rows
  newer than the retention and the newest row all stay;
* a real daemon (real Redis) with a tiny retention: under load the sweep deletes the finished
  rows while writes go on, the pipeline stays consistent, and acknowledged stream entries and old
  integration entries are trimmed;
* with Redis stopped, accepted writes stay pending through many sweeps and apply once it is back;
* the decided floor is written with the verdicts, read on restart (a history row the full scan
  would take for undecided is neither re-applied nor requeued), and found once by a full scan on a
  database that has no floor yet.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from metawsm.actors.forum.messages import HANDLER, RELAY, Reconcile
from metawsm.forum import marks, retention
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.forum.requests import AnswerRequest, OpenThreadRequest
from metawsm.forum.topics import Topics
from metawsm.store import write_transaction
from metawsm.waiting import wait_until
from support.daemon import InProcessDaemon, make_policy
from test_pipeline_reliability import Writer, assert_exactly_once, check_consistent, connect, scalar

OLD = "2020-01-01T00:00:00.000000Z"
CUTOFF = "2021-01-01T00:00:00.000000Z"
NEW = "2022-01-01T00:00:00.000000Z"
TINY = {"outbox_days": 1e-6, "stream_days": 1e-6, "sweep_seconds": 0.2}  # about 86 ms of history


# -- the sweep's choice, on a real SQLite file -------------------------------------------------


class _Rows:
    """Outbox rows written the way the pipeline writes them (topics, payload shape, statuses)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.topics = Topics()
        self.count = 0

    def add(self, kind: str, status: str = "sent", *, event_id: str = "", sequence: int | None = None,
            created: str = OLD) -> int:
        self.count += 1
        topic = {"command": self.topics.command("add_post"), "event": self.topics.event("forum.post.added"),
                 "integration": self.topics.integration("docs_sync_requested")}[kind]
        payload: dict[str, Any] = {"envelope": {"event_id": event_id or f"fevt_{self.count}"}}
        if sequence is not None:
            payload["sequence"] = sequence
        cursor = self.conn.execute(
            "INSERT INTO forum_outbox (message_id, topic, message_key, payload_json, status, attempt_count,"
            " last_error, created_at, updated_at) VALUES (?, ?, 'fthr_1', ?, ?, 1, '', ?, ?)",
            (f"fmsg_{self.count}", topic, msgspec.json.encode(payload).decode(), status, created, created),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def park(self, row_id: int, replayed: bool) -> None:
        message_id, topic, payload = self.conn.execute(
            "SELECT message_id, topic, payload_json FROM forum_outbox WHERE id = ?", (row_id,)).fetchone()
        self.conn.execute(
            "INSERT INTO forum_parked_messages (message_id, topic, stream, stream_entry_id, payload_json, attempts,"
            " last_error, parked_at, replayed_at) VALUES (?, ?, 's', '1-0', ?, 5, 'boom', ?, ?)",
            (message_id, topic, payload, OLD, OLD if replayed else None),
        )

    def verdict(self, event_id: str) -> None:
        self.conn.execute(
            "INSERT INTO forum_command_results (event_id, command_type, thread_id, status, decided_at)"
            " VALUES (?, 'add_post', 'fthr_1', 'applied', ?)", (event_id, OLD))


def sweep(conn: sqlite3.Connection, cutoff: str = CUTOFF, limit: int = 3) -> int:
    """A whole sweep the way the relay runs it: window after window (small, to cross windows)."""
    deleted, after = 0, 0
    while True:
        window = retention.window(conn, Topics(), cutoff=cutoff, after_id=after, limit=limit)
        with write_transaction(conn):
            deleted += retention.delete(conn, window.ids)
        after = window.last_id
        if window.done:
            return deleted


def remaining(conn: sqlite3.Connection) -> set[int]:
    return {row[0] for row in conn.execute("SELECT id FROM forum_outbox")}


@pytest.fixture
def outbox_db(migrated_db: sqlite3.Connection) -> sqlite3.Connection:
    return migrated_db


def test_the_sweep_deletes_only_rows_that_are_sent_and_applied(outbox_db: sqlite3.Connection) -> None:
    conn, rows = outbox_db, _Rows(outbox_db)
    with write_transaction(conn):
        done_command = rows.add("command")
        done_event = rows.add("event", sequence=1)
        applied_early = rows.add("command", status="pending")  # applied ahead of delivery, not sent yet
        parked = rows.add("command", status="parked")
        rows.park(parked, replayed=False)
        replayed_undecided = rows.add("command")
        rows.park(replayed_undecided, replayed=True)
        replayed_decided = rows.add("command", event_id="fevt_replayed")
        rows.park(replayed_decided, replayed=True)
        rows.verdict("fevt_replayed")
        integration = rows.add("integration")
        unprojected = rows.add("event", sequence=5)  # one projection is still at 3
        marks.write(conn, marks.DECIDED_FLOOR, unprojected, OLD)  # every command up to here is decided...
        undecided = rows.add("command")  # ...but not this one, above the floor
        recent = rows.add("command", created=NEW)  # decided by nothing yet, and newer than the retention
        old_after_recent = rows.add("integration")  # ids follow creation order: the sweep stops at `recent`
        newest = rows.add("integration", created=OLD)
        for name in PROJECTION_NAMES:
            conn.execute("INSERT INTO forum_projection_checkpoints (projection_name, last_sequence, updated_at)"
                         " VALUES (?, ?, ?)", (name, 3 if name == "queue_view" else 9, OLD))

    assert sweep(conn) == 4
    kept = remaining(conn)
    assert {done_command, done_event, replayed_decided, integration}.isdisjoint(kept)
    assert {applied_early, parked, replayed_undecided, unprojected, undecided, recent, old_after_recent,
            newest} <= kept

    # Once every projection is past the event, and with a cutoff past `recent`, all that is done goes
    # but the newest row: its id must never be handed out again.
    with write_transaction(conn):
        conn.execute("UPDATE forum_projection_checkpoints SET last_sequence = 9")
        marks.write(conn, marks.DECIDED_FLOOR, newest, NEW)
    assert sweep(conn, cutoff="2099-01-01T00:00:00.000000Z") == 4
    assert remaining(conn) == {applied_early, parked, replayed_undecided, newest}


def test_events_stay_while_a_projection_has_no_checkpoint(outbox_db: sqlite3.Connection) -> None:
    conn, rows = outbox_db, _Rows(outbox_db)
    with write_transaction(conn):
        event = rows.add("event", sequence=1)
        rows.add("integration")
        for name in PROJECTION_NAMES[:-1]:
            conn.execute("INSERT INTO forum_projection_checkpoints (projection_name, last_sequence, updated_at)"
                         " VALUES (?, 9, ?)", (name, OLD))
    assert sweep(conn) == 0
    assert event in remaining(conn)


# -- a real daemon -----------------------------------------------------------------------------


def column(daemon: InProcessDaemon, sql: str) -> list[Any]:
    conn = connect(daemon)
    try:
        return [row[0] for row in conn.execute(sql)]
    finally:
        conn.close()


def relay_details(daemon: InProcessDaemon) -> dict[str, Any]:
    node = daemon.system.inspect().find(RELAY)
    assert node is not None
    return node.details


def stream_lengths(url: str, namespace: str) -> dict[str, int]:
    client = redis.Redis.from_url(url)
    try:
        return {key.decode(): int(client.xlen(key)) for key in client.scan_iter(match=f"{namespace}.*", _type="STREAM")}
    finally:
        client.close()


def open_and_answer(daemon: InProcessDaemon, label: str) -> str:
    opened = daemon.forum.submit_sync(OpenThreadRequest(ticket="RET", title=label, body=f"{label} body",
                                                        actor_type="agent"))
    daemon.forum.submit_sync(AnswerRequest(body=f"{label} answer"), thread_id=opened.thread_id)
    return opened.thread_id


def test_a_tiny_retention_prunes_history_under_load_and_the_pipeline_stays_consistent(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    daemon = InProcessDaemon(make_policy(redis_url, redis_namespace, retention=TINY), tmp_path / "metawsm.db")
    try:
        # Eight writers at once while the sweep runs every 0.2 s and takes everything it may.
        writer = Writer(daemon.forum)
        writer.run(writers=8, per_writer=30)
        threads = [open_and_answer(daemon, f"t{i}") for i in range(10)]  # integration messages too
        wait_until(lambda: check_consistent(daemon) is None, timeout=30,
                   message="the pipeline did not settle")
        assert_exactly_once(daemon, writer)
        events = scalar(daemon, "SELECT COUNT(*) FROM forum_events")
        assert events == len(writer.acked) + 10 * 3  # nothing lost, nothing applied twice
        assert relay_details(daemon)["pruned_total"] > 0  # the sweeps ran along

        # Everything is applied and older than the retention: all of it goes but the newest row.
        wait_until(lambda: scalar(daemon, "SELECT COUNT(*) FROM forum_outbox") == 1, timeout=30,
                   message="the outbox was not pruned")
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_events") == events  # the log is never pruned
        assert check_consistent(daemon) is None
        assert len(daemon.forum.read(lambda r: r.list_threads({"ticket": "RET"}, limit=100))) == len(threads)

        # Acknowledged entries are trimmed, and the integration stream (nobody here consumes it)
        # by age: Redis ends up holding nothing of this history.
        lengths = stream_lengths(redis_url, redis_namespace)
        assert any(".forum.integration." in key for key in lengths), lengths
        wait_until(lambda: sum(stream_lengths(redis_url, redis_namespace).values()) == 0, timeout=30,
                   message="streams were not trimmed")

        # Writes go on normally after pruning (ids keep growing: the newest row was kept).
        newest = scalar(daemon, "SELECT MAX(id) FROM forum_outbox")
        open_and_answer(daemon, "after")
        assert scalar(daemon, "SELECT MIN(id) FROM forum_outbox WHERE status != 'sent' OR id > ?", (newest,)) > newest
        wait_until(lambda: check_consistent(daemon) is None, timeout=30, message="the pipeline did not settle")
    finally:
        daemon.stop()


def test_rows_not_sent_yet_stay_through_sweeps_while_redis_is_down(private_redis: Any, tmp_path: Path) -> None:
    daemon = InProcessDaemon(make_policy(private_redis.url, "mw", retention=TINY), tmp_path / "metawsm.db")
    try:
        open_and_answer(daemon, "before")
        wait_until(lambda: check_consistent(daemon) is None, timeout=30, message="the pipeline did not settle")
        private_redis.stop()
        accepted = [daemon.forum.submit_sync(OpenThreadRequest(ticket="RET", title=f"down {i}", body="b",
                                                               actor_type="agent"), wait=0.2)
                    for i in range(5)]
        assert {result.status for result in accepted} == {"accepted"}  # 202: durable, not applied
        pending = set(column(daemon, "SELECT id FROM forum_outbox WHERE status = 'pending'"))
        assert len(pending) == 5
        sweeps = relay_details(daemon)["retention_sweeps"]
        wait_until(lambda: relay_details(daemon)["retention_sweeps"] >= sweeps + 5, timeout=30,
                   message="the retention sweep did not run")
        still = set(column(daemon, "SELECT id FROM forum_outbox WHERE status = 'pending'"))
        assert still == pending

        private_redis.start()
        wait_until(lambda: check_consistent(daemon) is None, timeout=30, message="the backlog did not apply")
        titles = column(daemon, "SELECT title FROM forum_threads WHERE title LIKE 'down %'")
        assert sorted(titles) == [f"down {i}" for i in range(5)]
        wait_until(lambda: scalar(daemon, "SELECT COUNT(*) FROM forum_outbox") == 1, timeout=30,
                   message="the applied backlog was not pruned")
    finally:
        daemon.stop()


def handler_floor(daemon: InProcessDaemon) -> int:
    node = daemon.system.inspect().find(HANDLER)
    assert node is not None
    return int(node.details["decided_floor"])


def test_the_decided_floor_is_persisted_with_the_verdicts_and_bounds_start_up_and_reconcile(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    db = tmp_path / "metawsm.db"
    policy = make_policy(redis_url, redis_namespace)  # default retention: nothing is pruned here
    daemon = InProcessDaemon(policy, db)
    try:
        for i in range(10):
            open_and_answer(daemon, f"t{i}")
        wait_until(lambda: check_consistent(daemon) is None, timeout=30, message="the pipeline did not settle")
        last_command = scalar(daemon, "SELECT MAX(id) FROM forum_outbox WHERE topic LIKE 'forum.commands.%'")
        persisted = scalar(daemon, "SELECT value FROM forum_marks WHERE name = 'decided_floor'")
        assert persisted == handler_floor(daemon) >= last_command
    finally:
        daemon.stop()

    # History the full scan would take for undecided: a command below the floor whose event id has
    # no verdict.  Started from the persisted floor, the handler never looks at it, and reconcile
    # does not requeue it (a full scan would republish it and apply it a second time).
    conn = sqlite3.connect(db)
    first_command = conn.execute(  # t0's answer post: applied again, it would add a second post
        "SELECT MIN(id) FROM forum_outbox WHERE topic = 'forum.commands.add_post'").fetchone()[0]
    original = conn.execute("SELECT payload_json FROM forum_outbox WHERE id = ?", (first_command,)).fetchone()[0]
    with conn:
        conn.execute("UPDATE forum_outbox SET payload_json = json_set(payload_json, '$.envelope.event_id',"
                     " 'fevt_not_decided') WHERE id = ?", (first_command,))
    conn.close()

    daemon = InProcessDaemon(policy, db)
    try:
        assert handler_floor(daemon) >= persisted > first_command  # a full scan would stop below it
        assert daemon.system.ask(RELAY, Reconcile(reason="test"), timeout=10)["commands_requeued"] == 0
        assert scalar(daemon, "SELECT status FROM forum_outbox WHERE id = ?", (first_command,)) == "sent"
        conn = connect(daemon)
        with conn:
            conn.execute("UPDATE forum_outbox SET payload_json = ? WHERE id = ?", (original, first_command))
        conn.close()
        open_and_answer(daemon, "after restart")
        wait_until(lambda: check_consistent(daemon) is None, timeout=30, message="the pipeline did not settle")
        assert scalar(daemon, "SELECT value FROM forum_marks WHERE name = 'decided_floor'") > persisted
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_posts WHERE body = 't0 answer'") == 1  # applied once
    finally:
        daemon.stop()

    # A database without the mark (written before it existed) is scanned once and gets one.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("DELETE FROM forum_marks WHERE name = 'decided_floor'")
    conn.close()
    daemon = InProcessDaemon(policy, db)
    try:
        floor = handler_floor(daemon)
        assert floor >= scalar(daemon, "SELECT MAX(id) FROM forum_outbox WHERE topic LIKE 'forum.commands.%'")
        assert scalar(daemon, "SELECT value FROM forum_marks WHERE name = 'decided_floor'") == floor
    finally:
        daemon.stop()
