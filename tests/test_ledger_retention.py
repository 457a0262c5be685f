"""Retention of the projection ledger (issue 19): ``forum_projection_events`` rows of old events
every projection has applied are deleted, and the exactly-once check still holds above the floor.

* the sweep's choice on a real SQLite file: the rows of events older than the cutoff and at or
  below every checkpoint go, for every projection; an event some projection has not applied, or
  one at or after the cutoff, keeps its rows and stops the sweep; the floor moves with the rows;
  a second sweep changes nothing; a window read before a rebuild deletes nothing;
* a real daemon (real Redis) with a tiny ``ledger_days``: under concurrent writes the ledger is
  emptied behind the projections, and "rows above the floor == events above it" holds after the
  sweeps, right after a projection rebuild (which writes the old rows again) and once the sweeps
  have deleted those again.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from metawsm.actors.forum.messages import RELAY, Rebuild, projection_path
from metawsm.clock import format_time
from metawsm.forum import ledger_retention, marks
from metawsm.forum.messages import EventMessage
from metawsm.forum.projections.registry import PROJECTION_NAMES, all_projections
from metawsm.forum.requests import AnswerRequest, OpenThreadRequest
from metawsm.store import write_transaction
from metawsm.waiting import wait_until
from support.daemon import InProcessDaemon, make_policy
from support.forum_events import BASE_TIME, ForumEvents, ingest
from test_pipeline_reliability import Writer, assert_exactly_once, connect

NOW = "2099-01-01T00:00:00.000000Z"
TINY = {"ledger_days": 1e-6, "sweep_seconds": 0.2}  # about 86 ms of ledger; the outbox keeps 7 days


# -- the sweep's choice, on a real SQLite file -------------------------------------------------


def before(sequence: int) -> str:
    """A cutoff that makes the events below ``sequence`` old (ForumEvents: one second apart)."""
    return format_time(BASE_TIME + timedelta(seconds=sequence))


def history(count: int) -> list[EventMessage]:
    """``count`` events: threads opened and answered, in sequence order from 1."""
    ev = ForumEvents()
    thread = ev.open().envelope.thread_id
    while len(ev.events) < count:
        if len(ev.events) % 3 == 0:
            thread = ev.open(title=f"thread {len(ev.events)}").envelope.thread_id
        else:
            ev.post(thread, f"reply {len(ev.events)}")
    return ev.take()


def sweep(conn: sqlite3.Connection, cutoff: str = NOW, limit: int = 2) -> int:
    """A whole sweep the way the relay runs it: window after window (small, to cross windows)."""
    deleted = 0
    while True:
        window = ledger_retention.window(conn, cutoff=cutoff, limit=limit)
        if not window.event_ids:
            return deleted
        with write_transaction(conn):
            count = ledger_retention.delete(conn, window, NOW)
        assert count is not None  # nothing else writes here: a window never goes stale
        deleted += count
        if window.done:
            return deleted


def ledger(conn: sqlite3.Connection) -> dict[str, set[int]]:
    """The sequences each projection has a ledger row for."""
    found: dict[str, set[int]] = {name: set() for name in PROJECTION_NAMES}
    for name, sequence in conn.execute(
        "SELECT p.projection_name, e.sequence FROM forum_projection_events p JOIN forum_events e USING (event_id)"
    ):
        found[name].add(sequence)
    return found


def mark(conn: sqlite3.Connection, name: str) -> int | None:
    return marks.read(conn, name)


def catch_up(conn: sqlite3.Connection, name: str, events: list[EventMessage]) -> None:
    """``name`` applies ``events`` the way the projection actor does: tables, ledger, checkpoint."""
    projection = next(p for p in all_projections() if p.name == name)
    with write_transaction(conn):
        for event in events:
            projection.apply(conn, event)
            conn.execute("INSERT INTO forum_projection_events VALUES (?, ?, ?)", (name, event.envelope.event_id, NOW))
        conn.execute("UPDATE forum_projection_checkpoints SET last_sequence = ? WHERE projection_name = ?",
                     (events[-1].sequence, name))


def clear_for_rebuild(conn: sqlite3.Connection, name: str) -> None:
    """What a projection rebuild's clearing transaction does (the actor's is tested below, on a daemon)."""
    with write_transaction(conn):
        next(p for p in all_projections() if p.name == name).clear(conn)
        conn.execute("DELETE FROM forum_projection_events WHERE projection_name = ?", (name,))
        marks.write(conn, marks.LEDGER_SWEPT, 0, NOW)
        conn.execute("UPDATE forum_projection_checkpoints SET last_sequence = 0 WHERE projection_name = ?", (name,))


@pytest.fixture
def db(migrated_db: sqlite3.Connection) -> sqlite3.Connection:
    return migrated_db


def test_the_sweep_deletes_the_rows_of_old_events_every_projection_applied(db: sqlite3.Connection) -> None:
    events = history(12)
    ingest(db, events[:8])
    ingest(db, events[8:], [p for p in all_projections() if p.name != "queue_view"])  # queue_view is at 8
    assert ledger_retention.applied_above_floor(db) == (0, 12, {name: (8 if name == "queue_view" else 12,) * 2
                                                                 for name in PROJECTION_NAMES})

    # Events 1..5 are older than the cutoff: their rows go for every projection, and nothing else.
    assert sweep(db, cutoff=before(6)) == 5 * 4
    assert ledger(db) == {name: set(range(6, 9 if name == "queue_view" else 13)) for name in PROJECTION_NAMES}
    assert mark(db, marks.LEDGER_FLOOR) == mark(db, marks.LEDGER_SWEPT) == 5

    # Again with the same cutoff: nothing more to do.
    assert sweep(db, cutoff=before(6)) == 0
    assert mark(db, marks.LEDGER_FLOOR) == 5

    # Everything is old now, but queue_view has applied only up to 8: the sweep stops there.
    assert sweep(db) == 3 * 4
    assert ledger(db) == {name: set() if name == "queue_view" else set(range(9, 13)) for name in PROJECTION_NAMES}
    assert mark(db, marks.LEDGER_FLOOR) == 8
    floor, above, counts = ledger_retention.applied_above_floor(db, distinct=True)
    assert (floor, above) == (8, 4)
    assert counts == {name: (4, 4) for name in PROJECTION_NAMES if name != "queue_view"}

    # Once queue_view catches up, the rest goes too, and the ledger is empty.
    catch_up(db, "queue_view", events[8:])
    assert ledger_retention.applied_above_floor(db)[2]["queue_view"] == (4, 4)
    assert sweep(db) == 4 * 4
    assert ledger(db) == {name: set() for name in PROJECTION_NAMES}
    assert ledger_retention.applied_above_floor(db) == (12, 0, {})
    assert sweep(db) == 0
    assert mark(db, marks.LEDGER_FLOOR) == mark(db, marks.LEDGER_SWEPT) == 12
    assert db.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0] == 12  # the log is never pruned


def test_nothing_goes_while_a_projection_has_no_checkpoint(db: sqlite3.Connection) -> None:
    ingest(db, history(6), [p for p in all_projections() if p.name != "control_state"])
    assert sweep(db) == 0
    assert mark(db, marks.LEDGER_FLOOR) is None
    assert ledger(db) == {name: set() if name == "control_state" else set(range(1, 7)) for name in PROJECTION_NAMES}


def test_a_rebuild_sends_the_sweep_back_over_the_old_rows_and_the_floor_stays(db: sqlite3.Connection) -> None:
    events = history(10)
    ingest(db, events)
    assert sweep(db, cutoff=before(7)) == 6 * 4

    # A rebuild of thread_views: its rows go, its replay writes them all again (below the floor
    # too).  The floor stays where it was, so the other projections still check out above it.
    clear_for_rebuild(db, "thread_views")
    catch_up(db, "thread_views", events)
    assert ledger(db)["thread_views"] == set(range(1, 11))
    assert ledger_retention.applied_above_floor(db) == (6, 4, {name: (4, 4) for name in PROJECTION_NAMES})

    # The next sweep goes over the first events again and deletes the replay's rows of them.
    assert sweep(db, cutoff=before(7)) == 6
    assert ledger(db) == {name: set(range(7, 11)) for name in PROJECTION_NAMES}
    assert mark(db, marks.LEDGER_FLOOR) == mark(db, marks.LEDGER_SWEPT) == 6
    assert sweep(db) == 4 * 4
    assert ledger_retention.applied_above_floor(db) == (10, 0, {})


@pytest.mark.parametrize("swept_first", [False, True], ids=["from the start", "from the floor"])
def test_a_window_read_before_a_rebuild_deletes_nothing(db: sqlite3.Connection, swept_first: bool) -> None:
    events = history(10)
    ingest(db, events)
    if swept_first:
        sweep(db, cutoff=before(4))
    window = ledger_retention.window(db, cutoff=NOW, limit=5)
    assert window.event_ids
    clear_for_rebuild(db, "thread_views")
    before_delete = ledger(db)
    with write_transaction(db):
        assert ledger_retention.delete(db, window, NOW) is None
    assert ledger(db) == before_delete
    assert mark(db, marks.LEDGER_SWEPT) == 0

    # The replay is applied, and the sweep takes it from there.
    catch_up(db, "thread_views", events)
    sweep(db)
    assert ledger(db) == {name: set() for name in PROJECTION_NAMES}
    assert mark(db, marks.LEDGER_FLOOR) == 10


# -- a real daemon -----------------------------------------------------------------------------


def relay_details(daemon: InProcessDaemon) -> dict[str, Any]:
    node = daemon.system.inspect().find(RELAY)
    assert node is not None
    return node.details


def ledger_check(daemon: InProcessDaemon) -> str | None:
    """None when every projection has applied every event and has exactly one ledger row per event
    above the ledger floor, else what is off."""
    conn = connect(daemon)
    try:
        last = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        checkpoints = dict(conn.execute("SELECT projection_name, last_sequence FROM forum_projection_checkpoints")
                           .fetchall())
        floor, above, counts = ledger_retention.applied_above_floor(conn, distinct=True)
    finally:
        conn.close()
    for name in PROJECTION_NAMES:
        if checkpoints.get(name, 0) != last:
            return f"{name}: checkpoint {checkpoints.get(name, 0)}, last event {last}"
        if counts.get(name, (0, 0)) != (above, above):
            return f"{name}: {counts.get(name, (0, 0))} ledger rows (distinct) for {above} events above floor {floor}"
    return None


def settled(daemon: InProcessDaemon) -> str | None:
    """``ledger_check``, and the sweep has gone through every event (the ledger is empty)."""
    problem = ledger_check(daemon)
    if problem is not None:
        return problem
    conn = connect(daemon)
    try:
        last = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        rows = conn.execute("SELECT COUNT(*) FROM forum_projection_events").fetchone()[0]
        swept = marks.read(conn, marks.LEDGER_SWEPT)
    finally:
        conn.close()
    if rows or swept != last:
        return f"{rows} ledger rows left, swept through {swept} of {last}"
    return None


def wait_settled(daemon: InProcessDaemon, what: str) -> None:
    last: list[str | None] = [None]

    def ok() -> bool:
        last[0] = settled(daemon)
        return last[0] is None

    try:
        wait_until(ok, timeout=30, interval=0.02)
    except TimeoutError:
        raise AssertionError(f"{what}: {last[0]}") from None


def open_and_answer(daemon: InProcessDaemon, label: str) -> None:
    opened = daemon.forum.submit_sync(OpenThreadRequest(ticket="LEDGER", title=label, body=f"{label} body",
                                                        actor_type="agent"))
    daemon.forum.submit_sync(AnswerRequest(body=f"{label} answer"), thread_id=opened.thread_id)


def test_a_tiny_ledger_retention_empties_the_ledger_and_survives_a_rebuild(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    daemon = InProcessDaemon(make_policy(redis_url, redis_namespace, retention=TINY), tmp_path / "metawsm.db")
    try:
        # Four writers at once while the sweep runs every 0.2 s and takes every row it may.
        writer = Writer(daemon.forum)
        writer.run(writers=4, per_writer=20)
        for i in range(5):
            open_and_answer(daemon, f"t{i}")
        wait_settled(daemon, "the ledger was not swept behind the projections")
        assert_exactly_once(daemon, writer)
        events = scalar(daemon, "SELECT COUNT(*) FROM forum_events")
        floor = scalar(daemon, "SELECT value FROM forum_marks WHERE name = 'ledger_floor'")
        assert floor == events  # sequences have no gaps: the floor is the newest event
        # One row per projection and event deleted, once; the relay's figures follow its last window.
        wait_until(lambda: (relay_details(daemon)["ledger_rows_deleted"], relay_details(daemon)["ledger_floor"])
                   == (4 * events, events), timeout=30, message="the relay does not report the sweep")

        # A rebuild replays every event, writing the rows of the swept ones again.  The floor
        # stays, so the check holds at once; the sweeps then delete the replayed rows again.
        result = daemon.system.ask(projection_path("thread_views"), Rebuild(), timeout=30)
        assert result.events_replayed == events
        assert ledger_check(daemon) is None
        assert scalar(daemon, "SELECT value FROM forum_marks WHERE name = 'ledger_floor'") == floor
        wait_settled(daemon, "the rebuild's rows were not swept")
        assert len(daemon.forum.read(lambda r: r.list_threads({"ticket": "LEDGER"}, limit=100))) == 5

        # Writes go on, and are applied and swept like the others.
        open_and_answer(daemon, "after")
        wait_settled(daemon, "the new events were not swept")
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_events") == events + 3
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_posts WHERE body = 'after answer'") == 1
    finally:
        daemon.stop()


def test_the_default_ledger_days_keep_every_row(redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    daemon = InProcessDaemon(make_policy(redis_url, redis_namespace, retention={"sweep_seconds": 0.2}),
                             tmp_path / "metawsm.db")
    try:
        open_and_answer(daemon, "kept")
        wait_until(lambda: ledger_check(daemon) is None, timeout=30, message="the pipeline did not settle")
        sweeps = relay_details(daemon)["retention_sweeps"]
        wait_until(lambda: relay_details(daemon)["retention_sweeps"] >= sweeps + 3, timeout=30,
                   message="the retention sweep did not run")
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_projection_events") == 4 * 3
        assert relay_details(daemon)["ledger_rows_deleted"] == 0
        assert scalar(daemon, "SELECT COUNT(*) FROM forum_marks WHERE name LIKE 'ledger_%'") == 0
    finally:
        daemon.stop()


def scalar(daemon: InProcessDaemon, sql: str) -> Any:
    conn = connect(daemon)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()
