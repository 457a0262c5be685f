"""SQL for ``forum_marks``: small durable positions of the pipeline (docs/store.md).

* ``decided_floor``: every command row of ``forum_outbox`` at or below this id has a verdict in
  ``forum_command_results`` or is parked.  The CommandHandler writes it in the transaction that
  records the verdicts, so it is never ahead of them; start-up, reconcile and retention read it
  instead of scanning every command ever accepted.
* ``ledger_floor``: no ``forum_projection_events`` row is left for an event at or below this
  ``forum_events`` sequence, but those a projection rebuild wrote again; above it every projection
  has exactly one row per event it applied.  Moved up only, by the ledger retention
  (:mod:`metawsm.forum.ledger_retention`) in the transaction that deletes the rows.
* ``ledger_swept``: where the ledger retention's next window starts; equal to ``ledger_floor``
  except after a projection rebuild, which sets it to 0 in its clearing transaction (its replay
  writes the old events' rows again), so the sweep goes over them once more.
* ``storage_probe``: bumped by the OutboxRelay's probe write while the database could not be
  written (:mod:`metawsm.store.faults`); its value means nothing.
"""

from __future__ import annotations

import sqlite3

DECIDED_FLOOR = "decided_floor"
LEDGER_FLOOR = "ledger_floor"
LEDGER_SWEPT = "ledger_swept"
STORAGE_PROBE = "storage_probe"


def read(conn: sqlite3.Connection, name: str) -> int | None:
    """The mark's value, or None when it was never written (a database from before migration 5)."""
    row = conn.execute("SELECT value FROM forum_marks WHERE name = ?", (name,)).fetchone()
    return None if row is None else int(row[0])


def write(conn: sqlite3.Connection, name: str, value: int, now: str) -> None:
    """Set the mark; call it inside the caller's write transaction."""
    conn.execute(
        "INSERT INTO forum_marks (name, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (name, value, now),
    )


def probe(conn: sqlite3.Connection, now: str) -> None:
    """A real write (a page changed and committed through the WAL), and nothing else."""
    conn.execute(
        "INSERT INTO forum_marks (name, value, updated_at) VALUES (?, 1, ?)"
        " ON CONFLICT(name) DO UPDATE SET value = value + 1, updated_at = excluded.updated_at",
        (STORAGE_PROBE, now),
    )
