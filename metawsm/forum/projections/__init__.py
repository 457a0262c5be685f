"""Read models built from ``forum_events``.

Each projection is a plain object with ``apply(conn, event)`` and ``clear(conn)``; the
projection actor (``metawsm.actors.forum.projection``) owns the transaction, the
``forum_projection_events`` ledger row and the checkpoint, and guarantees each event is
applied once and in sequence order.  ``apply`` therefore never commits and never checks
for duplicates itself.
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar, Protocol

from metawsm.forum.messages import EventMessage


class Projection(Protocol):
    name: ClassVar[str]

    def apply(self, conn: sqlite3.Connection, event: EventMessage) -> None:
        """Fold one event into this projection's tables (inside the caller's transaction)."""

    def clear(self, conn: sqlite3.Connection) -> None:
        """Delete everything this projection owns (for a rebuild; caller's transaction)."""
