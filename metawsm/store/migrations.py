"""Numbered schema migrations, recorded in ``schema_migrations``.

Each migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the insert of
its ``schema_migrations`` row, so a crash leaves it either fully applied and recorded or
not there at all (SQLite DDL is transactional). The "already applied?" check is repeated
inside that transaction: two processes that start migrating at once queue on the write
lock, and the second finds the first one's row and skips.

To add a migration: write ``apply(db: sqlite_utils.Database) -> None`` (new module or
function), append ``Migration(<last + 1>, "<what it does>", apply)`` to :data:`MIGRATIONS`.
Never edit or renumber one that has shipped; databases in the field already recorded it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from metawsm.clock import now_text
from metawsm.store import (
    schema_auth,
    schema_delivery,
    schema_forum,
    schema_idempotency,
    schema_marks,
    schema_operator,
    schema_runs,
)
from metawsm.store.db import StoreError, write_transaction

if TYPE_CHECKING:
    import sqlite_utils

LEDGER = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    """One schema step. ``apply`` runs inside an open transaction: it must not commit."""

    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "forum schema", schema_forum.apply),
    Migration(2, "run tables", schema_runs.apply),
    Migration(3, "agent tokens", schema_auth.apply),
    Migration(4, "api idempotency keys", schema_idempotency.apply),
    Migration(5, "forum pipeline marks", schema_marks.apply),
    Migration(6, "run iterations", schema_delivery.apply),
    Migration(7, "run pull requests", schema_delivery.apply_pull_requests),
    Migration(8, "doc sync errors", schema_delivery.apply_doc_sync_errors),
    Migration(9, "run review feedback", schema_delivery.apply_review_feedback),
    Migration(10, "operator decisions", schema_operator.apply),
    Migration(11, "operator decision context", schema_operator.apply_context),
    Migration(12, "forum search rows keyed by thread", schema_forum.apply_search_keys),
    Migration(13, "contentless forum search, partial list indexes", schema_forum.apply_contentless_search),
    Migration(14, "queue view without list indexes", schema_forum.apply_queue_view_indexes),
)


def _check_numbering(migrations: Sequence[Migration]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3, ... without gaps, got {versions}")


def _ledger_exists(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEDGER,)
    ).fetchone()
    return row is not None


def _applied_versions(conn: sqlite3.Connection) -> set[int]:
    if not _ledger_exists(conn):
        return set()
    return {int(row[0]) for row in conn.execute(f"SELECT version FROM {LEDGER}")}


def _database_file(conn: sqlite3.Connection) -> str:
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return str(row[2]) or ":memory:"
    return "?"


def current_version(conn: sqlite3.Connection) -> int:
    """Highest applied migration version; 0 for a database never migrated."""
    if not _ledger_exists(conn):
        return 0
    row = conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {LEDGER}").fetchone()
    return int(row[0])


def _open_schema_library(conn: sqlite3.Connection) -> sqlite_utils.Database:
    # Imported here, not at module level: it costs ~0.2 s, which every CLI start would pay.
    import sqlite_utils

    # No plugins and no PRAGMA side effects on a connection the caller may keep using.
    return sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)


def _create_ledger(db: sqlite_utils.Database) -> None:
    db.create_table(
        LEDGER,
        {"version": int, "name": str, "applied_at": str},
        pk="version",
        not_null={"name", "applied_at"},
        if_not_exists=True,
    )


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply pending migrations in order; return the versions this call applied.

    Idempotent and safe to run from several processes at once. ``migrations`` defaults to
    the full list; tests pass a prefix to build an "older" database. Raises
    :class:`StoreError` if the database was migrated by a newer metawsm (it would otherwise
    run against tables it does not understand).
    """
    _check_numbering(migrations)
    if conn.in_transaction:
        raise RuntimeError("migrate() needs a connection without an open transaction")
    applied = _applied_versions(conn)
    latest = len(migrations)
    newer = sorted(v for v in applied if v > latest)
    if newer:
        raise StoreError(
            _database_file(conn),
            f"schema version {max(newer)} is newer than this metawsm supports ({latest}); "
            "upgrade metawsm",
        )
    pending = [m for m in migrations if m.version not in applied]
    if not pending:
        return []  # the common start-up path: one read, no write lock, no sqlite-utils

    db = _open_schema_library(conn)
    if not _ledger_exists(conn):
        with write_transaction(conn):
            _create_ledger(db)
    done: list[int] = []
    for migration in pending:
        with write_transaction(conn):
            already = conn.execute(
                f"SELECT 1 FROM {LEDGER} WHERE version = ?", (migration.version,)
            ).fetchone()
            if already is not None:
                continue  # another process applied it while we waited for the lock
            migration.apply(db)
            if not conn.in_transaction:
                raise RuntimeError(
                    f"migration {migration.version} ({migration.name}) ended the transaction "
                    "itself; it must leave committing to migrate()"
                )
            conn.execute(
                f"INSERT INTO {LEDGER} (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, now_text()),
            )
        done.append(migration.version)
    return done
