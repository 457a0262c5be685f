"""How far each projection is behind the event log.

A projection's checkpoint is the last sequence it applied (0 before its first event); its
lag is ``max(forum_events.sequence)`` minus that, read in one snapshot.  Every name in
``PROJECTION_NAMES`` is always present.
"""

from __future__ import annotations

import sqlite3

from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.forum.reads.db import rows, snapshot
from metawsm.forum.reads.events import latest_sequence


def projection_checkpoints(conn: sqlite3.Connection) -> dict[str, int]:
    """Last applied sequence per projection: every known name (0 when it has none yet)."""
    result = dict.fromkeys(PROJECTION_NAMES, 0)
    for row in rows(conn, "SELECT projection_name, last_sequence FROM forum_projection_checkpoints"):
        result[row[0]] = int(row[1])
    return result


def projection_lag(conn: sqlite3.Connection) -> dict[str, int]:
    """max(forum_events.sequence) − checkpoint, per projection in PROJECTION_NAMES."""
    with snapshot(conn):
        latest = latest_sequence(conn)
        checkpoints = projection_checkpoints(conn)
    return {name: max(0, latest - checkpoints.get(name, 0)) for name in PROJECTION_NAMES}
