"""Run tables (migration 2): runs, their steps, agents, bootstrap briefs and history.

Owned by the run actors (``Run[<run_id>]`` writes ``runs``, ``run_steps``, ``events``,
``run_briefs``, ``doc_sync_states``; ``TmuxAgent[<agent>]`` writes its ``run_agents`` row).
Times are TEXT RFC 3339 UTC; lists and the frozen RunSpec are JSON text.

A run's status changes by compare-and-set (``UPDATE runs SET status = ? WHERE run_id = ?
AND status = ?``) and each change is recorded in ``events`` in the same transaction; the
``runs.status`` index serves the daemon's start-up query for non-terminal runs.

Children reference ``runs`` with (immediate) foreign keys: insert the run first, in the same
transaction or an earlier one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing sqlite-utils is slow; only migrations that run need it
    import sqlite_utils

TABLES = ("runs", "run_steps", "run_agents", "run_briefs", "events", "doc_sync_states")

_RUN_FK = [("run_id", "runs", "run_id")]


def _index(db: sqlite_utils.Database, table: str, *columns: str, unique: bool = False) -> None:
    prefix = "ux" if unique else "ix"
    db.table(table).create_index(list(columns), index_name=f"{prefix}_{table}_{'_'.join(columns)}", unique=unique)


def apply(db: sqlite_utils.Database) -> None:
    """Migration 2: create the run tables. Runs inside the migration's transaction."""
    db.create_table(
        "runs",
        {
            "run_id": str,
            "mode": str,  # run | bootstrap
            "status": str,
            "tickets_json": str,
            "repos_json": str,
            "spec_json": str,  # the frozen RunSpec
            "error": str,
            "created_at": str,
            "updated_at": str,
        },
        pk="run_id",
        not_null={"run_id", "mode", "status", "tickets_json", "repos_json", "spec_json", "created_at", "updated_at"},
        defaults={"tickets_json": "[]", "repos_json": "[]", "spec_json": "{}", "error": ""},
    )
    _index(db, "runs", "status")
    _index(db, "runs", "created_at")

    db.create_table(
        "run_steps",
        {
            "id": int,
            "run_id": str,
            "ordinal": int,
            "ticket": str,
            "name": str,
            "status": str,  # pending | running | done | failed | skipped
            "attempts": int,
            "error": str,
            "started_at": str,
            "finished_at": str,
        },
        pk="id",
        not_null={"run_id", "ordinal", "ticket", "name", "status", "attempts"},
        defaults={"ticket": "", "status": "pending", "attempts": 0, "error": ""},
        foreign_keys=_RUN_FK,
    )
    _index(db, "run_steps", "run_id", "ordinal", unique=True)

    db.create_table(
        "run_agents",
        {
            "run_id": str,
            "agent_name": str,
            "workspace": str,
            "session_name": str,  # the sanitised name actually used
            "tmux_socket": str,
            "workspace_path": str,
            "status": str,
            "health": str,
            "pane_pid": int,
            "restarts_used": int,
            "last_activity_at": str,
            "last_progress_at": str,
            "last_error": str,
            "updated_at": str,
        },
        pk=("run_id", "agent_name", "workspace"),
        not_null={"run_id", "agent_name", "workspace", "session_name", "status", "health", "restarts_used",
                  "updated_at"},
        defaults={
            "session_name": "", "tmux_socket": "", "workspace_path": "", "health": "",
            "restarts_used": 0, "last_error": "",
        },
        foreign_keys=_RUN_FK,
    )

    db.create_table(
        "run_briefs",
        {
            "run_id": str,
            "ticket": str,
            "goal": str,
            "scope": str,
            "done_criteria": str,
            "constraints": str,
            "merge_intent": str,
            "qa_json": str,  # [{"question": ..., "answer": ...}, ...]
            "created_at": str,
        },
        pk="run_id",
        not_null={
            "run_id", "ticket", "goal", "scope", "done_criteria", "constraints", "merge_intent",
            "qa_json", "created_at",
        },
        defaults={"qa_json": "[]"},
        foreign_keys=_RUN_FK,
    )

    db.create_table(
        "events",
        {
            "id": int,
            "run_id": str,
            "at": str,
            "kind": str,
            "from_status": str,
            "to_status": str,
            "message": str,
        },
        pk="id",
        not_null={"run_id", "at", "kind"},
        defaults={"from_status": "", "to_status": "", "message": ""},
        foreign_keys=_RUN_FK,
    )
    _index(db, "events", "run_id", "id")

    db.create_table(
        "doc_sync_states",
        {
            "run_id": str,
            "ticket": str,
            "workspace": str,
            "status": str,
            "revision": str,
            "updated_at": str,
        },
        pk=("run_id", "ticket", "workspace"),
        not_null={"run_id", "ticket", "workspace", "status", "updated_at"},
        defaults={"revision": ""},
        foreign_keys=_RUN_FK,
    )
