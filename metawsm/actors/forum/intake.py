"""CommandIntake: validates write requests and makes them durable in ``forum_outbox``.

Requests that arrive while one is being handled are committed together (group commit):
each ``Submit`` is parked with its reply handle and a single ``_Commit`` message, queued
behind them, writes the whole batch in one ``BEGIN IMMEDIATE`` transaction.  With
``synchronous=FULL`` that turns N fsyncs into one under load, and costs nothing when idle.

A write sent with an ``Idempotency-Key`` has its key recorded in that same transaction
(:mod:`metawsm.idempotency_keys`): a Submit whose key is already recorded writes nothing and is
answered with the recorded write, so a client's retry never writes twice, even when the first
attempt timed out while its Submit still waited here.  The intake also sweeps expired keys.
"""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from typing import Any, ClassVar

import msgspec

from metawsm import idempotency_keys
from metawsm.actors import storage
from metawsm.actors.errors import ActorCrashed, ActorUnavailable, IdempotencyKeyReused, Refusal
from metawsm.actors.forum.messages import RELAY, Accepted, Submit, WorkAvailable
from metawsm.actors.managed import DEFERRED, ManagedActor
from metawsm.clock import format_time, now_text, utc_now
from metawsm.forum import commands, outbox, write_model
from metawsm.forum.errors import ForumError, ThreadNotFound, for_command
from metawsm.forum.messages import OpenThread, encode
from metawsm.store import write_transaction

MAX_BATCH = 256
PRUNE_KEYS_SECONDS = 600.0  # expired idempotency keys are swept this often (and at start)


class _Commit(msgspec.Struct, frozen=True):
    """The intake's own "commit the batch", queued behind the Submits that arrived meanwhile."""


class _PruneKeys(msgspec.Struct, frozen=True):
    """The intake's own sweep of idempotency keys older than ``api.idempotency_ttl_hours``."""


# Request: Submit -> Accepted once the batch holding it is committed (a ForumError refusal when
# the command is refused, IdempotencyKeyReused when its key was used for another request); it
# must be a request.  Tells: _Commit and _PruneKeys, the intake's own.
IntakeMessage = Submit | _Commit | _PruneKeys


class CommandIntake(ManagedActor):
    kind: ClassVar[str] = "intake"

    def setup(self) -> None:
        services = self.system.services
        self.topics = services.topics
        self.conn: sqlite3.Connection = services.db.connect()
        self._batch: list[tuple[Submit, Any]] = []
        self._commit_queued = False
        self.accepted_total = 0
        self.batches = 0
        self.keys_pruned = 0
        self.tell_self(_PruneKeys())
        self.tell_self_every(PRUNE_KEYS_SECONDS, _PruneKeys())

    def teardown(self) -> None:
        # Not committed: fail the callers with an actor error (HTTP 503, safe to retry).  A bare
        # Refusal here would reach the HTTP layer as an unexpected exception (500).
        for _, reply in self._batch:
            reply.fail(ActorUnavailable(self.path, "restarting (the request was not committed)"))
        self._batch.clear()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"accepted_total": self.accepted_total, "batches": self.batches, "keys_pruned": self.keys_pruned}

    def handle(self, message: Any) -> Any:
        match message:
            case Submit():
                fault = self.system.services.storage.fault
                if fault is not None:
                    raise storage.unavailable(fault)  # at once: nothing can be written until the probe clears it
                reply = self.defer_reply()
                if reply is None:
                    raise Refusal("Submit must be sent as a request")
                self._batch.append((message, reply))
                if not self._commit_queued:
                    self._commit_queued = True
                    self.tell_self(_Commit())
                return DEFERRED
            case _Commit():
                self._commit_queued = False
                while self._batch:
                    batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
                    self._commit(batch)
                return None
            case _PruneKeys():
                self._prune_keys()
                return None
            case _:
                return super().handle(message)

    def _commit(self, batch: list[tuple[Submit, Any]]) -> None:
        now = now_text()
        answers: list[tuple[Any, Any]] = []
        try:
            with write_transaction(self.conn):
                for submit, reply in batch:
                    try:
                        answers.append((reply, self._accept(submit, now)))
                    except (ForumError, IdempotencyKeyReused) as refusal:
                        answers.append((reply, refusal))
        except BaseException as exc:
            fault = self.system.services.storage.report(exc)
            if fault is not None:
                # A full or failing disk, not a bug: refuse (503 with the reason) and keep running.
                # A crash would meet the same error after every restart until the supervisor gave up.
                # The Submits still queued behind this batch are refused too, without another try.
                for _, reply in [*batch, *self._batch]:
                    reply.fail(storage.unavailable(fault))
                self._batch.clear()
                self.system.tell(RELAY, WorkAvailable())  # the relay's sweep probes the disk: at the fast pace now
                return
            # Nothing was committed: tell every waiting caller before crashing.
            for _, reply in batch:
                reply.fail(ActorCrashed(self.path, f"{type(exc).__name__}: {exc}"))
            raise
        self.batches += 1
        # The relay first: publishing is what the write's caller waits for next (its answer here
        # only lets it start waiting for the verdict), so the relay should not queue for the
        # interpreter behind the event loop that the answers wake.
        if any(not isinstance(answer, Exception) and not answer.already_applied for _, answer in answers):
            self.system.tell(RELAY, WorkAvailable())
        for reply, answer in answers:
            if isinstance(answer, Exception):
                reply.fail(answer)
            else:
                self.accepted_total += 1
                reply.resolve(answer)

    def _accept(self, submit: Submit, now: str) -> Accepted:
        claim = submit.idempotency
        if claim is not None:
            known = idempotency_keys.lookup(self.conn, claim)  # another request's key: refused (409)
            if known is not None:
                return self._recorded(claim, known)
        planned = commands.plan(submit.request, submit.thread_id, submit.default_actor_type)
        first = planned.commands[0]
        name = first.name
        try:
            thread = write_model.check(self.conn, first)
        except ThreadNotFound:
            if not self._open_pending(first.envelope.thread_id):
                raise
            thread = None
        except ForumError as error:
            raise for_command(error, "answer" if len(planned.commands) > 1 else name) from None
        if isinstance(first.command, OpenThread) and thread is not None:
            if claim is not None:
                idempotency_keys.record(self.conn, claim, now, thread_id=thread.thread_id)
            return Accepted(
                thread_id=thread.thread_id, event_id=first.envelope.event_id, event_ids=[], already_applied=True
            )
        for message in planned.commands:
            payload = encode(message)
            outbox.enqueue(self.conn, self.topics.command(message.name), message.envelope.thread_id, payload, now)
        if claim is not None:
            idempotency_keys.record(self.conn, claim, now, thread_id=planned.thread_id,
                                    event_id=planned.wait_event_id)
        return Accepted(
            thread_id=planned.thread_id,
            event_id=planned.wait_event_id,
            event_ids=[m.envelope.event_id for m in planned.commands],
        )

    @staticmethod
    def _recorded(claim: idempotency_keys.KeyClaim, known: idempotency_keys.KeyRecord) -> Accepted:
        """The answer to a retry: the write its key recorded (nothing new is written).

        The caller then waits for the recorded event's verdict exactly as the first caller did
        (it is usually known by now), or reads the thread when that write was a no-op.
        """
        if not known.thread_id:
            raise idempotency_keys.answered_refusal(claim)
        if not known.event_id:
            return Accepted(thread_id=known.thread_id, event_id="", event_ids=[], already_applied=True)
        return Accepted(thread_id=known.thread_id, event_id=known.event_id, event_ids=[known.event_id])

    def _prune_keys(self) -> None:
        """Delete a batch of expired idempotency keys; a full batch queues the next one behind the
        Submits that arrived meanwhile, so a large backlog never holds writes up."""
        hours = self.system.services.policy.api.idempotency_ttl_hours
        cutoff = format_time(utc_now() - timedelta(hours=hours))
        if self.system.services.storage.fault is not None:
            return  # a delete needs room in the WAL too: the next sweep prunes
        try:
            with write_transaction(self.conn):
                deleted = idempotency_keys.prune(self.conn, cutoff)
        except sqlite3.Error as error:
            if self.system.services.storage.report(error) is None:
                raise
            return
        self.keys_pruned += deleted
        if deleted >= idempotency_keys.PRUNE_BATCH:
            self.tell_self(_PruneKeys())

    def _open_pending(self, thread_id: str) -> bool:
        """True if an open_thread for this id is accepted but not yet applied (a 202 earlier)."""
        row = self.conn.execute(
            "SELECT 1 FROM forum_outbox WHERE topic = ? AND message_key = ? AND status != 'parked'"
            " AND NOT EXISTS (SELECT 1 FROM forum_threads WHERE thread_id = ?) LIMIT 1",
            (self.topics.command("open_thread"), thread_id, thread_id),
        ).fetchone()
        return row is not None
