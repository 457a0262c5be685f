"""The operator's decisions (migrations 10, 11): what it decided, for which run, why, and on what cause.

``cause`` names what the decision answers (for ``escalate_guidance``, the event id of the pending
guidance request). ``(run_id, intent, cause)`` is unique, so the same decision is never taken twice
for the same cause, across daemon restarts too: the insert that claims it is the record.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import msgspec

from metawsm.operator.model import Decision, Suggestion

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
            "source": str,  # rule | llm
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


def apply_context(db: sqlite_utils.Database) -> None:
    """Migration 11: the agent's workspace, the run's status and tickets, and the LLM's suggestion."""
    table = db.table(TABLE)
    for column in ("workspace", "run_status", "tickets_json", "llm_json"):
        table.add_column(column, str, not_null_default="")


_COLUMNS = ("run_id", "intent", "reason", "cause", "source", "executed", "at", "thread_id", "ticket", "agent_name",
            "workspace", "run_status", "tickets_json", "llm_json")
_tickets = msgspec.json.Decoder(list[str])
_suggestion = msgspec.json.Decoder(Suggestion)


def _row(decision: Decision) -> dict[str, Any]:
    row = msgspec.structs.asdict(decision)
    row["executed"] = 1 if decision.executed else 0
    row["tickets_json"] = msgspec.json.encode(decision.tickets).decode()
    row["llm_json"] = msgspec.json.encode(decision.llm).decode() if decision.llm is not None else ""
    return row


def claim(conn: sqlite3.Connection, decision: Decision) -> int | None:
    """Record a decision unless one with the same (run_id, intent, cause) exists.

    Returns the new row's id (also set on ``decision``), or None when it was already taken.
    """
    cursor = conn.execute(
        f"INSERT OR IGNORE INTO {TABLE} ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})",
        _row(decision),
    )
    if cursor.rowcount != 1:
        return None
    decision.id = int(cursor.lastrowid or 0)
    return decision.id


def mark_executed(conn: sqlite3.Connection, decision_id: int, reason: str | None = None) -> None:
    if reason is None:
        conn.execute(f"UPDATE {TABLE} SET executed = 1 WHERE id = ?", (decision_id,))
    else:
        conn.execute(f"UPDATE {TABLE} SET executed = 1, reason = ? WHERE id = ?", (reason, decision_id))


def set_reason(conn: sqlite3.Connection, decision_id: int, reason: str) -> None:
    conn.execute(f"UPDATE {TABLE} SET reason = ? WHERE id = ?", (reason, decision_id))


def set_suggestion(conn: sqlite3.Connection, decision_id: int, suggestion: Suggestion) -> None:
    conn.execute(f"UPDATE {TABLE} SET llm_json = ? WHERE id = ?",
                 (msgspec.json.encode(suggestion).decode(), decision_id))


def _decision(row: dict[str, Any]) -> Decision:
    tickets = _tickets.decode(row.pop("tickets_json") or "[]")
    llm_json = row.pop("llm_json")
    llm = _suggestion.decode(llm_json) if llm_json else None
    row["executed"] = bool(row["executed"])
    return Decision(**row, tickets=tickets, llm=llm)


def decisions(conn: sqlite3.Connection, run_id: str | None = None, *, after_id: int = 0,
              limit: int | None = None) -> list[Decision]:
    """Decisions oldest first; only those with an id above ``after_id``, at most ``limit``."""
    sql = f"SELECT id, {', '.join(_COLUMNS)} FROM {TABLE} WHERE id > ?"
    args: list[Any] = [after_id]
    if run_id:
        sql += " AND run_id = ?"
        args.append(run_id)
    sql += " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    cursor = conn.execute(sql, args)
    names = [d[0] for d in cursor.description]
    return [_decision(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


def decision(conn: sqlite3.Connection, decision_id: int) -> Decision | None:
    found = decisions(conn, after_id=decision_id - 1, limit=1)
    return found[0] if found and found[0].id == decision_id else None
