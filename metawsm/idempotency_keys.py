"""Idempotency keys of API writes: the claim a keyed request makes, and the durable record of it.

A row of ``api_idempotency_keys`` (``metawsm/store/schema_idempotency.py``) is written in up
to two steps, each in a transaction of its own:

* **recorded** together with the write: the intake inserts it in the transaction that puts the
  write's commands into ``forum_outbox`` (``thread_id``, ``event_id``), the runs supervisor in
  the one that inserts the run (``run_id``).  A crash can therefore never leave a write without
  its key, nor a key without its write;
* **answered** once the caller's answer is known (``response_status``, ``response_body``).  A
  request with no write to share a transaction with (a refusal, a run action, a seen marker) has
  only this step.

A 202 is not an answer in this sense (the outcome is still to come): ``response_status`` stays 0
and a retry finds the outcome through the recorded event.  Rows older than
``api.idempotency_ttl_hours`` are deleted by the intake's sweep (:func:`prune`).
"""

from __future__ import annotations

import sqlite3

import msgspec

from metawsm.actors.errors import IdempotencyKeyReused
from metawsm.store.schema_idempotency import TABLE

PRUNE_BATCH = 5_000  # rows per DELETE: keeps each sweep's hold on the write lock short


class KeyClaim(msgspec.Struct, frozen=True):
    """A request's ``Idempotency-Key``, scoped to its caller, and a fingerprint of what it asks.

    ``caller`` is ``operator`` or ``agent:<run_id>:<agent>``: keys of different callers never
    meet, so no caller can replay another's answer.  ``fingerprint`` is the SHA-256 of the
    method, path and canonical body (:func:`metawsm.api.idempotency.fingerprint`).
    """

    caller: str
    key: str
    fingerprint: str
    method: str = "POST"
    path: str = ""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    thread_id: str = ""
    event_id: str = ""  # the forum event the write's caller waits for ("" when it wrote nothing)
    run_id: str = ""
    response_status: int = 0
    response_body: bytes = b""

    @property
    def answered(self) -> bool:
        """True once a final answer is stored: a retry repeats it byte for byte."""
        return self.response_status != 0


def reused(claim: KeyClaim) -> IdempotencyKeyReused:
    return IdempotencyKeyReused(
        f"Idempotency-Key {claim.key!r} was already used for a different request (method, path or body); "
        "send a new key with a new request"
    )


def answered_refusal(claim: KeyClaim) -> IdempotencyKeyReused:
    """For a write asked again under a key whose first request was refused and wrote nothing.

    The API repeats that refusal before the write is asked for, so only a race gets here; the
    write must not happen under the key (recording it would clash with the stored refusal).
    """
    return IdempotencyKeyReused(
        f"Idempotency-Key {claim.key!r} was answered with a refusal; send a new key with a new request"
    )


def recorded_run(claim: KeyClaim, known: KeyRecord) -> str:
    """The run a key's first request started (a retry answers with it and starts nothing)."""
    if not known.run_id:
        raise answered_refusal(claim)
    return known.run_id


def lookup(conn: sqlite3.Connection, claim: KeyClaim) -> KeyRecord | None:
    """The record of ``claim``'s key, or None; refuses (409) a key recorded with another fingerprint."""
    row = conn.execute(
        f"SELECT fingerprint, thread_id, event_id, run_id, response_status, response_body FROM {TABLE}"
        " WHERE caller = ? AND idempotency_key = ?",
        (claim.caller, claim.key),
    ).fetchone()
    if row is None:
        return None
    if row[0] != claim.fingerprint:
        raise reused(claim)
    return KeyRecord(fingerprint=row[0], thread_id=row[1], event_id=row[2], run_id=row[3],
                     response_status=int(row[4]), response_body=bytes(row[5] or b""))


def record(conn: sqlite3.Connection, claim: KeyClaim, now: str, *, thread_id: str = "", event_id: str = "",
           run_id: str = "") -> None:
    """Record a keyed write; call it inside the transaction that makes the write durable."""
    conn.execute(
        f"INSERT INTO {TABLE} (caller, idempotency_key, fingerprint, method, path, thread_id, event_id, run_id,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (claim.caller, claim.key, claim.fingerprint, claim.method, claim.path, thread_id, event_id, run_id, now),
    )


def answer(conn: sqlite3.Connection, claim: KeyClaim, now: str, status: int, body: bytes) -> None:
    """Store the final answer of a keyed request.

    Inserts the row when the request recorded none (it wrote nothing, or its route has no write
    of its own to record it with); never replaces a stored answer, nor touches the row of
    another fingerprint.
    """
    conn.execute(
        f"INSERT INTO {TABLE} (caller, idempotency_key, fingerprint, method, path, response_status, response_body,"
        " created_at, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (caller, idempotency_key) DO UPDATE SET response_status = excluded.response_status,"
        " response_body = excluded.response_body, answered_at = excluded.answered_at"
        f" WHERE {TABLE}.response_status = 0 AND {TABLE}.fingerprint = excluded.fingerprint",
        (claim.caller, claim.key, claim.fingerprint, claim.method, claim.path, status, body, now, now),
    )


def prune(conn: sqlite3.Connection, created_before: str, limit: int = PRUNE_BATCH) -> int:
    """Delete up to ``limit`` keys created before ``created_before``; returns how many went."""
    cursor = conn.execute(
        f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} WHERE created_at < ? LIMIT ?)",
        (created_before, limit),
    )
    return cursor.rowcount
