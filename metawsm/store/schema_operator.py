"""The operator's decisions (migration 10): what it decided, for which run, why, and on what cause.

``cause`` names what the decision answers (for ``escalate_guidance``, the event id of the pending
guidance request). ``(run_id, intent, cause)`` is unique, so the same decision is never taken twice
for the same cause, across daemon restarts too: the insert that claims it is the record.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import sqlite_utils

TABLE = "operator_decisions"


def apply(db: sqlite_utils.Database) -> None:
    db.create_table(
        TABLE,
        {
            "id": int,
            "run_id": str,
            "intent": str,
            "reason": str,
            "cause": str,
            "source": str,  # 'rule' (later slices: 'llm')
            "executed": int,  # 1 once the action was handed to the forum
            "at": str,
            "thread_id": str,
            "ticket": str,
            "agent_name": str,
        },
        pk="id",
        not_null={"run_id", "intent", "reason", "cause", "source", "executed", "at"},
        defaults={"reason": "", "cause": "", "source": "rule", "executed": 0, "thread_id": "", "ticket": "",
                  "agent_name": ""},
    )
    db.table(TABLE).create_index(["run_id", "intent", "cause"], index_name="operator_decisions_once", unique=True)


def claim(conn: sqlite3.Connection, row: dict[str, Any]) -> bool:
    """Record a decision unless one with the same (run_id, intent, cause) exists; True if recorded."""
    cursor = conn.execute(
        f"INSERT OR IGNORE INTO {TABLE} (run_id, intent, reason, cause, source, executed, at, thread_id, ticket,"
        " agent_name) VALUES (:run_id, :intent, :reason, :cause, :source, :executed, :at, :thread_id, :ticket,"
        " :agent_name)",
        row,
    )
    return cursor.rowcount == 1


def decisions(conn: sqlite3.Connection, run_id: str | None = None) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM {TABLE}"
    args: tuple[str, ...] = ()
    if run_id:
        sql += " WHERE run_id = ?"
        args = (run_id,)
    cursor = conn.execute(sql + " ORDER BY id", args)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
