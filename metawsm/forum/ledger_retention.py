"""Retention of ``forum_projection_events``, the projections' ledger (docs/forum.md#retention).

A projection's idempotency rests on its checkpoint (events at or below it are skipped), so the
ledger is a record of what was applied, one row per projection and event, and old rows only cost
room.  The sweep walks ``forum_events`` in sequence order, a window at a time, and deletes the
ledger rows of events that

* every projection has applied (at or below :func:`retention.projected_through`), and
* occurred before the cutoff (``forum.retention.ledger_days`` ago).

The first event too new, or not applied everywhere, ends the sweep, so it moves on contiguously.
Two marks in ``forum_marks`` (:mod:`metawsm.forum.marks`) keep its place:

* ``ledger_floor``: no projection has a row for an event at or below it, but those a rebuild
  wrote again; above it, each has exactly one row per event it applied (the exactly-once check,
  :func:`applied_above_floor`).  It never goes down: the other projections' rows below it are
  gone, so counting from lower would find them missing.
* ``ledger_swept``: where the next window starts.  Equal to the floor, except after a projection
  rebuild, which sets it to 0 because its replay writes rows for the old events again; the sweep
  then goes over them once more and deletes those.

The window is read without a lock; the caller deletes it and moves the marks in one short write
transaction (:func:`delete`), which first checks that the marks and the checkpoints still allow
it: a rebuild in between resets both the position and its projection's checkpoint.
"""

from __future__ import annotations

import sqlite3

import msgspec

from metawsm.forum import marks
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.forum.retention import projected_through
from metawsm.store import read_transaction

WINDOW = 500  # events per batch: at most 2,000 ledger rows deleted in one short hold of the write lock
_CHUNK = 500  # event ids per DELETE statement (SQLite's variable limit is 999 on old builds)

_EVENTS_SQL = (
    "SELECT sequence, event_id, occurred_at FROM forum_events"
    " WHERE sequence > ? AND sequence <= ? ORDER BY sequence LIMIT ?"
)


class LedgerWindow(msgspec.Struct, frozen=True):
    """One batch of the sweep: the events whose ledger rows go, and where the sweep stands after."""

    start: int  # the position (``ledger_swept``) the window was read from
    last: int  # the position once deleted: the highest sequence among ``event_ids`` (``start`` when empty)
    event_ids: list[str]
    done: bool  # nothing past ``last`` may go yet: the sweep is over


def position(conn: sqlite3.Connection) -> int:
    """Where the next window starts (a database swept before ``ledger_swept`` existed: the floor)."""
    swept = marks.read(conn, marks.LEDGER_SWEPT)
    return swept if swept is not None else floor(conn)


def floor(conn: sqlite3.Connection) -> int:
    """The ledger floor: 0 until a sweep deleted something."""
    return marks.read(conn, marks.LEDGER_FLOOR) or 0


def window(conn: sqlite3.Connection, *, cutoff: str, limit: int = WINDOW) -> LedgerWindow:
    """The next ``limit`` events past the position, applied everywhere and occurred before ``cutoff``."""
    with read_transaction(conn):  # the marks, the checkpoints and the events as of one moment
        start = position(conn)
        through = projected_through(conn)
        event_ids: list[str] = []
        last = start
        too_new = False
        # Read lazily: the first event too new ends the window, so a sweep with nothing to do
        # reads one row, not a whole window.
        cursor = conn.execute(_EVENTS_SQL, (start, through, limit))
        try:
            for sequence, event_id, occurred_at in cursor:
                if occurred_at >= cutoff:
                    too_new = True  # the sweep may not pass an event whose rows stay
                    break
                event_ids.append(event_id)
                last = int(sequence)
        finally:
            cursor.close()
    return LedgerWindow(start, last, event_ids, too_new or len(event_ids) < limit)


def delete(conn: sqlite3.Connection, window: LedgerWindow, now: str) -> int | None:
    """Delete the window's ledger rows and move the marks; call it inside the caller's write
    transaction.  The rows deleted, or None when the window is stale and nothing was done."""
    if not window.event_ids:
        return 0
    # Checked under the write lock: a rebuild since the read set its checkpoint below the window,
    # and the rows its replay writes for these events would stay behind the sweep for good.  The
    # next window is read again from the marks as they are now.
    if position(conn) != window.start or projected_through(conn) < window.last:
        return None
    deleted = 0
    for start in range(0, len(window.event_ids), _CHUNK):
        chunk = window.event_ids[start:start + _CHUNK]
        placeholders = ",".join("?" * len(chunk))
        for name in PROJECTION_NAMES:  # one statement per projection: the primary key finds each row
            cursor = conn.execute(
                f"DELETE FROM forum_projection_events WHERE projection_name = ? AND event_id IN ({placeholders})",
                (name, *chunk),
            )
            deleted += cursor.rowcount
    marks.write(conn, marks.LEDGER_SWEPT, window.last, now)
    if window.last > floor(conn):
        marks.write(conn, marks.LEDGER_FLOOR, window.last, now)
    return deleted


def applied_above_floor(
    conn: sqlite3.Connection, *, distinct: bool = False
) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """The exactly-once check's numbers, as of one moment: (the ledger floor, events above it, and per
    projection the ledger rows above it paired with how many distinct events they name; with
    ``distinct`` False, which spares the DISTINCT, the row count twice).

    Rows "above the floor" are all rows but those of events at or below it, so a row naming an
    event the log does not hold is counted (and shows up as one too many).  With a floor of 0 (no
    sweep yet) these are plain counts of the whole ledger, at the cost of one index scan.
    """
    columns = "projection_name, COUNT(*)" + (", COUNT(DISTINCT event_id)" if distinct else "")
    with read_transaction(conn):
        at = floor(conn)
        events = int(conn.execute("SELECT COUNT(*) FROM forum_events WHERE sequence > ?", (at,)).fetchone()[0])
        if at == 0:
            rows = conn.execute(f"SELECT {columns} FROM forum_projection_events GROUP BY projection_name").fetchall()
        else:
            rows = conn.execute(
                f"SELECT {columns} FROM forum_projection_events p WHERE NOT EXISTS (SELECT 1 FROM forum_events e"
                " WHERE e.event_id = p.event_id AND e.sequence <= ?) GROUP BY projection_name", (at,)
            ).fetchall()
    counts = {str(row[0]): (int(row[1]), int(row[2] if distinct else row[1])) for row in rows}
    return at, events, counts
