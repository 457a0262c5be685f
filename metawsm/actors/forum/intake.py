"""CommandIntake: validates write requests and makes them durable in ``forum_outbox``.

Requests that arrive while one is being handled are committed together (group commit):
each ``Submit`` is parked with its reply handle and a single ``_Commit`` message, queued
behind them, writes the whole batch in one ``BEGIN IMMEDIATE`` transaction.  With
``synchronous=FULL`` that turns N fsyncs into one under load, and costs nothing when idle.
"""

from __future__ import annotations

import sqlite3
from typing import Any, ClassVar

import msgspec

from metawsm.actors.errors import ActorCrashed, ActorUnavailable, Refusal
from metawsm.actors.forum.messages import RELAY, Accepted, Submit, WorkAvailable
from metawsm.actors.managed import DEFERRED, ManagedActor
from metawsm.clock import now_text
from metawsm.forum import commands, outbox, write_model
from metawsm.forum.errors import ForumError, ThreadNotFound, for_command
from metawsm.forum.messages import OpenThread, encode
from metawsm.store import write_transaction

MAX_BATCH = 256


class _Commit(msgspec.Struct, frozen=True):
    pass


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

    def teardown(self) -> None:
        # Not committed: fail the callers with an actor error (HTTP 503, safe to retry).  A bare
        # Refusal here would reach the HTTP layer as an unexpected exception (500).
        for _, reply in self._batch:
            reply.fail(ActorUnavailable(self.path, "restarting (the request was not committed)"))
        self._batch.clear()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"accepted_total": self.accepted_total, "batches": self.batches}

    def handle(self, message: Any) -> Any:
        if isinstance(message, Submit):
            reply = self.defer_reply()
            if reply is None:
                raise Refusal("Submit must be sent as a request")
            self._batch.append((message, reply))
            if not self._commit_queued:
                self._commit_queued = True
                self.tell_self(_Commit())
            return DEFERRED
        if isinstance(message, _Commit):
            self._commit_queued = False
            while self._batch:
                batch, self._batch = self._batch[:MAX_BATCH], self._batch[MAX_BATCH:]
                self._commit(batch)
            return None
        return super().handle(message)

    def _commit(self, batch: list[tuple[Submit, Any]]) -> None:
        now = now_text()
        answers: list[tuple[Any, Any]] = []
        try:
            with write_transaction(self.conn):
                for submit, reply in batch:
                    try:
                        answers.append((reply, self._accept(submit, now)))
                    except ForumError as refusal:
                        answers.append((reply, refusal))
        except BaseException as exc:
            # Nothing was committed: tell every waiting caller before crashing.
            for _, reply in batch:
                reply.fail(ActorCrashed(self.path, f"{type(exc).__name__}: {exc}"))
            raise
        self.batches += 1
        wrote = False
        for reply, answer in answers:
            if isinstance(answer, Exception):
                reply.fail(answer)
            else:
                wrote = wrote or not answer.already_applied
                self.accepted_total += 1
                reply.resolve(answer)
        if wrote:
            self.system.tell(RELAY, WorkAvailable())

    def _accept(self, submit: Submit, now: str) -> Accepted:
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
            return Accepted(
                thread_id=thread.thread_id, event_id=first.envelope.event_id, event_ids=[], already_applied=True
            )
        for message in planned.commands:
            payload = encode(message)
            outbox.enqueue(self.conn, self.topics.command(message.name), message.envelope.thread_id, payload, now)
        return Accepted(
            thread_id=planned.thread_id,
            event_id=planned.wait_event_id,
            event_ids=[m.envelope.event_id for m in planned.commands],
        )

    def _open_pending(self, thread_id: str) -> bool:
        """True if an open_thread for this id is accepted but not yet applied (a 202 earlier)."""
        row = self.conn.execute(
            "SELECT 1 FROM forum_outbox WHERE topic = ? AND message_key = ? AND status != 'parked'"
            " AND NOT EXISTS (SELECT 1 FROM forum_threads WHERE thread_id = ?) LIMIT 1",
            (self.topics.command("open_thread"), thread_id, thread_id),
        ).fetchone()
        return row is not None
