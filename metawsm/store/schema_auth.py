"""Agent tokens (migration 3).

Only a token's SHA-256 is stored: a copy of the database (a backup, a bug report) must not
let anyone act as an agent.  Tokens carry 256 random bits, so a plain hash is enough; a slow
password hash would only slow down every request an agent makes.

A token belongs to one agent of one run (``run_id``, ``ticket``, ``agent_name``); minting a
new one for the same agent revokes the previous one, and closing or cleaning up the run
revokes them all (``revoked_at`` set, the row kept for the audit trail).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

TABLE = "agent_tokens"


def apply(db: sqlite_utils.Database) -> None:
    db.create_table(
        TABLE,
        {
            "token_sha256": str,
            "run_id": str,
            "ticket": str,
            "agent_name": str,
            "created_at": str,
            "revoked_at": str,  # NULL while the token is valid
        },
        pk="token_sha256",
        not_null={"run_id", "ticket", "agent_name", "created_at"},
    )
    db.table(TABLE).create_index(["run_id", "ticket", "agent_name"], index_name="agent_tokens_by_agent")
