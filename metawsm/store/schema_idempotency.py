"""Idempotency keys of API writes (migration 4).

One row per (caller, key): the request's fingerprint, what it wrote (a forum write's thread and
the event its caller waits for, or a run), and once known its final answer.  The queries, and
why a row is written in two steps, are in :mod:`metawsm.idempotency_keys`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite_utils

TABLE = "api_idempotency_keys"


def apply(db: sqlite_utils.Database) -> None:
    db.create_table(
        TABLE,
        {
            "caller": str,  # "operator" or "agent:<run_id>:<agent>": keys are scoped to their caller
            "idempotency_key": str,
            "fingerprint": str,  # SHA-256 of method, path and canonical body
            "method": str,
            "path": str,
            "thread_id": str,
            "event_id": str,
            "run_id": str,
            "response_status": int,  # 0 until a final answer is stored
            "response_body": bytes,
            "created_at": str,
            "answered_at": str,
        },
        pk=("caller", "idempotency_key"),
        not_null={"fingerprint", "method", "path", "thread_id", "event_id", "run_id", "response_status",
                  "created_at", "answered_at"},
        defaults={"method": "", "path": "", "thread_id": "", "event_id": "", "run_id": "", "response_status": 0,
                  "answered_at": ""},
    )
    # The sweep deletes by age (api.idempotency_ttl_hours).
    db.table(TABLE).create_index(["created_at"], index_name="ix_api_idempotency_keys_created_at")
