"""``Idempotency-Key`` on write routes: a retried request is applied once and answered alike.

The middleware :func:`idempotent_writes` takes every ``POST`` that carries the header.  It
checks the key (1 to 128 printable ASCII characters, else 400 ``invalid_idempotency_key``),
scopes it to the caller (the operator, or one agent) and fingerprints the request (SHA-256 of
method, path, query and canonical JSON body).  Then, for that (caller, key):

* another request with the key **in flight** in this daemon: a different fingerprint is refused
  (409 ``idempotency_key_reused``); the same one waits for that request's answer, up to
  ``forum.write_wait_ms``, and repeats it (503 while it is still running: retry later);
* a **stored answer** (metawsm/idempotency_keys.py): repeated byte for byte, with
  ``Idempotent-Replayed: true``; a different fingerprint is refused (409);
* otherwise the handler runs with the claim (:func:`claim_of`).  A forum write hands it to the
  intake, which records it in the transaction of the write, or answers a key it already recorded
  with that write instead of writing again; run start does the same in the run's transaction.
  The answer is stored once it is final: 200 and the other 2xx but 202, and every 4xx but the
  409 about the key itself.  A 202, a 5xx or a failure stores nothing: the outcome is not known
  yet, and a retry finds it through the recorded write (or, if nothing was recorded, applies it).

"In flight" is in memory: one daemon serves a database, and across a restart the durable
record is what counts.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
from aiohttp import web

from metawsm.actors.errors import IdempotencyKeyReused, Refusal
from metawsm.api.auth import identity
from metawsm.api.errors import ApiError, error_body
from metawsm.api.registry import Handler
from metawsm.auth.tokens import Identity
from metawsm.clock import now_text
from metawsm.idempotency_keys import KeyClaim, KeyRecord, answer, lookup, reused
from metawsm.store import Database, write_transaction

log = logging.getLogger("metawsm.api")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 128
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[ -~]+$"}
CLAIM = "metawsm_idempotency_claim"


class Answer(msgspec.Struct, frozen=True):
    """What a keyed request was answered: repeated to its retries."""

    status: int
    body: bytes

    @property
    def final(self) -> bool:
        """Stored and repeated: anything but a 202 (outcome still to come) and a 5xx (unknown)."""
        return 200 <= self.status < 500 and self.status != 202


def parse_key(value: str) -> str:
    """The key as sent; 400 unless it is 1 to 128 printable ASCII characters (space to ``~``)."""
    if not 1 <= len(value) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in value):
        raise ApiError(400, "invalid_idempotency_key",
                       f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters")
    return value


def caller_of(who: Identity) -> str:
    return f"agent:{who.run_id}:{who.agent}" if who.is_agent else "operator"


def canonical_body(raw: bytes) -> bytes:
    """The body as the handler reads it, in one spelling: key order and spacing do not count,
    and an empty body is ``{}``.  A body that is not JSON is taken as it is (it will be refused)."""
    if not raw.strip():
        return b"{}"
    try:
        return msgspec.json.encode(msgspec.json.decode(raw), order="sorted")
    except Exception:  # noqa: BLE001 - invalid or too deep: the handler refuses it; hash the bytes
        return raw


def fingerprint(method: str, path: str, query: list[tuple[str, str]], raw: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.upper(), path, msgspec.json.encode(sorted(query)).decode()):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    digest.update(canonical_body(raw))
    return digest.hexdigest()


def claim_of(request: web.Request) -> KeyClaim | None:
    """The request's idempotency claim, for handlers that record it with their write."""
    claim: KeyClaim | None = request.get(CLAIM)
    return claim


def replay(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/json",
                        headers={REPLAYED_HEADER: "true"})


class _Flight:
    """A keyed request being answered; its retries wait on ``done`` (None: no answer to repeat)."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.done: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()


class IdempotencyKeys:
    """The daemon's keys: requests in flight (memory) and stored answers (SQLite).

    SQLite is reached on one thread of its own with its own connection: a lookup is one
    indexed read, an answer one small write.
    """

    def __init__(self, db: Database, wait_seconds: float) -> None:
        self.db = db
        self.wait_seconds = wait_seconds
        self._flights: dict[tuple[str, str], _Flight] = {}
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency")

    def close(self) -> None:
        def close_connection() -> None:
            conn = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        self._pool.submit(close_connection)
        self._pool.shutdown(wait=True)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.db.connect()
        return conn

    def _lookup(self, claim: KeyClaim) -> KeyRecord | None:
        return lookup(self._connection(), claim)

    def _store(self, claim: KeyClaim, reply: Answer) -> None:
        conn = self._connection()
        with write_transaction(conn):
            answer(conn, claim, now_text(), reply.status, reply.body)

    async def _run(self, function: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    async def serve(self, request: web.Request, handler: Handler, claim: KeyClaim) -> web.StreamResponse:
        slot = (claim.caller, claim.key)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while True:
            flight = self._flights.get(slot)
            if flight is not None:
                if flight.fingerprint != claim.fingerprint:
                    raise reused(claim)
                earlier = await self._wait(flight, claim, deadline - loop.time())
                if earlier is not None:
                    return replay(earlier.status, earlier.body)
                continue  # it ended without an answer to repeat (a 202, a 503): go on as a retry
            record: KeyRecord | None = await self._run(self._lookup, claim)  # 409 on another fingerprint
            if slot in self._flights:
                continue  # a request with this key started while we read
            if record is not None and record.answered:
                return replay(record.response_status, record.response_body)
            break
        flight = self._flights[slot] = _Flight(claim.fingerprint)
        reply: Answer | None = None
        try:
            request[CLAIM] = claim
            try:
                response = await handler(request)
            except IdempotencyKeyReused:
                raise  # about the key, not the request: nothing to store
            except (ApiError, Refusal) as error:
                reply = Answer(error.status, error_body(error.code, error.message))
                raise
            if isinstance(response, web.Response) and isinstance(response.body, bytes):
                reply = Answer(response.status, response.body)
            return response
        finally:
            if reply is not None and not reply.final:
                reply = None
            try:
                if reply is not None:
                    await self._run(self._store, claim, reply)
            except Exception as error:  # noqa: BLE001 - the request itself is answered; a retry re-derives it
                log.warning("could not store the answer for %s %r: %s", HEADER, claim.key, error)
                reply = None
            finally:
                del self._flights[slot]
                flight.done.set_result(reply)

    async def _wait(self, flight: _Flight, claim: KeyClaim, budget: float) -> Answer | None:
        try:
            return await asyncio.wait_for(asyncio.shield(flight.done), max(budget, 0.0))
        except TimeoutError:
            raise ApiError(503, "unavailable", f"the request with {HEADER} {claim.key!r} is still in progress; "
                                               "retry it with the same key") from None


KEYS: web.AppKey[IdempotencyKeys] = web.AppKey("metawsm_idempotency", IdempotencyKeys)


@web.middleware
async def idempotent_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Routes every keyed ``POST`` of a known route through :meth:`IdempotencyKeys.serve`."""
    value = request.headers.get(HEADER)
    if value is None or request.method != "POST" or request.match_info.http_exception is not None:
        return await handler(request)
    key = parse_key(value)
    raw = await request.read()
    claim = KeyClaim(
        caller=caller_of(identity(request)),
        key=key,
        fingerprint=fingerprint(request.method, request.path, list(request.query.items()), raw),
        method=request.method,
        path=request.path,
    )
    return await request.app[KEYS].serve(request, handler, claim)
