"""Durable marks of the forum pipeline (migration 5): ``forum_marks``.

One row per named position, so start-up and reconcile can begin from where the work stands
instead of scanning the whole history: ``decided_floor`` is the CommandHandler's outbox id at or
below which every command has a verdict (or is parked), written in its apply transaction;
``storage_probe`` is the OutboxRelay's probe write while the database could not be written.  The
queries are in :mod:`metawsm.forum.marks`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

TABLE = "forum_marks"


def apply(db: sqlite_utils.Database) -> None:
    db.create_table(
        TABLE,
        {"name": str, "value": int, "updated_at": str},
        pk="name",
        not_null={"name", "value", "updated_at"},
        defaults={"value": 0},
    )
