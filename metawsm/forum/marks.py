"""SQL for ``forum_marks``: small durable positions of the pipeline (docs/store.md).

* ``decided_floor``: every command row of ``forum_outbox`` at or below this id has a verdict in
  ``forum_command_results`` or is parked.  The CommandHandler writes it in the transaction that
  records the verdicts, so it is never ahead of them; start-up, reconcile and retention read it
  instead of scanning every command ever accepted.
* ``storage_probe``: bumped by the OutboxRelay's probe write while the database could not be
  written (:mod:`metawsm.store.faults`); its value means nothing.
"""

from __future__ import annotations

import sqlite3

DECIDED_FLOOR = "decided_floor"
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
