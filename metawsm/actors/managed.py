"""``ManagedActor``: a Pykka thread actor whose every failure reaches its supervisor.

Pykka alone misses several ways an actor can die: an exception in ``on_start`` only logs,
an exception while answering an ``ask`` goes to the caller and the actor carries on, and a
``BaseException`` stops *every* actor in the process.  This base class closes those gaps:

* all failures — in ``setup()``, in ``handle()`` for a tell or a request, even a
  ``BaseException`` — stop this actor only and are reported once to the parent as a
  :class:`ChildExited` with a :class:`FailureInfo`;
* a clean stop is reported too, so the supervisor can tell "asked to stop" from
  "stopped by itself";
* requests that can no longer be answered (queued behind a crash) fail fast with
  :class:`ActorUnavailable` instead of leaving the caller waiting for its timeout.

Subclasses override :meth:`setup`, :meth:`handle`, :meth:`teardown` and :meth:`describe`
and never the Pykka hooks.  Each subclass's module declares its mailbox as a union of message
Structs (``RelayMessage = WorkAvailable | Flush | ...``) and ``handle`` matches on it; see
docs/messages.md.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pykka

from metawsm.actors.bridge import CallbackReply
from metawsm.actors.errors import ActorCrashed, ActorUnavailable, InjectedFault, Refusal
from metawsm.actors.messages import ChildExited, Crash, FailureInfo, Ping, Request
from metawsm.actors.stats import ActorStats
from metawsm.clock import now_text

if TYPE_CHECKING:
    from metawsm.actors.system import ActorSystem

log = logging.getLogger(__name__)

# Every managed actor's mailbox starts with these two, answered (or raised) by the runtime
# before ``handle()`` sees anything: ``Ping`` is a request answered "pong", ``Crash`` a tell.
RuntimeMessage = Ping | Crash


def failure_of(exc: BaseException) -> FailureInfo:
    text = str(exc) or repr(exc)
    return FailureInfo(type=type(exc).__name__, message=text, at=now_text())


@dataclass(frozen=True)
class ActorContext:
    """What a supervisor hands to each incarnation of a child."""

    system: ActorSystem
    path: str
    child_id: str
    generation: int
    stats: ActorStats
    started: threading.Event
    notify_parent: Callable[[ChildExited], object]


class DeferredReply:
    """Marker returned by :meth:`ManagedActor.handle` when the answer will come later."""


DEFERRED = DeferredReply()


class ManagedActor(pykka.ThreadingActor):
    kind: ClassVar[str] = "actor"

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.system = ctx.system
        self.path = ctx.path
        self._exit_reported = False
        self._current_reply: Any = None
        self._postponed: list[Any] = []  # messages (or Request envelopes) set aside by postpone()

    # -- hooks for subclasses -------------------------------------------------------------

    def setup(self) -> None:
        """Acquire resources and rebuild state from durable sources."""

    def handle(self, message: Any) -> Any:
        """Answer one message; raise :class:`Refusal` for caller errors, anything else crashes."""
        raise TypeError(f"{type(self).__name__} does not handle {type(message).__name__}")

    def teardown(self) -> None:
        """Release resources; called on a clean stop and, best effort, after a crash."""

    def describe(self) -> dict[str, Any]:
        """Extra inspection fields.  Runs on the inspecting thread: only read attributes."""
        return {}

    # -- helpers for subclasses -----------------------------------------------------------

    def defer_reply(self) -> Any:
        """Take over the current request's reply handle; ``handle`` must then return DEFERRED."""
        reply, self._current_reply = self._current_reply, None
        return reply

    def reply_to_self(
        self, on_value: Callable[[Any], Any], on_error: Callable[[BaseException], Any]
    ) -> CallbackReply:
        """A reply handle for a request this actor sends without waiting: the answer comes back
        into this actor's mailbox as the message ``on_value(value)`` or ``on_error(error)``.

        Both builders run on the *answering* actor's thread, so they must only build a message
        (no access to this actor's state).  Send it with ``ref.tell(Request(body, handle))`` or
        :meth:`Supervisor.tell_child`.  A builder that returns None tells nothing (an answer this
        actor does not need); an answer that arrives after this incarnation died is dropped.
        """
        ref = self.actor_ref

        def deliver(message: Any) -> None:
            if message is None:
                return
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass

        return CallbackReply(lambda value: deliver(on_value(value)), lambda error: deliver(on_error(error)))

    def postpone(self, message: Any) -> DeferredReply:
        """Set ``message`` (with its reply handle, if it is a request) aside; ``handle`` returns
        what this returns.  :meth:`replay_postponed` handles the postponed messages later, in
        order, as if they arrived then.  Whatever is still set aside when this incarnation stops
        or crashes fails like its mailbox (:class:`ActorUnavailable`)."""
        reply = self.defer_reply()
        self._postponed.append(message if reply is None else Request(body=message, reply=reply))
        return DEFERRED

    def replay_postponed(self) -> None:
        """Handle the postponed messages now, oldest first.  A message that ``handle``
        postpones again goes back in line, still ahead of anything postponed after it."""
        pending, self._postponed = self._postponed, []
        for index, envelope in enumerate(pending):
            if self.actor_stopped.is_set():  # a replayed message crashed or stopped this actor
                self._fail_requests(pending[index:], ActorUnavailable(self.path, "stopped"))
                return
            self.on_receive(envelope)

    def tell_self(self, message: Any) -> None:
        try:
            self.actor_ref.tell(message)
        except pykka.ActorDeadError:
            pass

    def tell_self_every(self, seconds: float, message: Any) -> None:
        """Tell this incarnation ``message`` every ``seconds`` (sweeps, polls); the timer ends
        with it, so a replacement starts its own."""
        ref = self.actor_ref

        def tick() -> bool:
            try:
                ref.tell(message)
                return True
            except pykka.ActorDeadError:
                return False

        self.system.scheduler.every(seconds, tick)

    def tell_self_later(self, seconds: float, message: Any) -> None:
        """Tell this incarnation ``message`` once, after ``seconds`` (dropped if it has died):
        the building block of timers that pick their next delay themselves."""
        ref = self.actor_ref

        def fire() -> None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass

        self.system.scheduler.call_later(seconds, fire)

    # -- Pykka hooks ----------------------------------------------------------------------

    def on_start(self) -> None:
        stats = self.ctx.stats
        stats.urn = self.actor_urn
        stats.mailbox_depth = self._mailbox_depth
        stats.describe = self.describe
        stats.state = "starting"
        stats.thread = threading.current_thread()
        try:
            self.setup()
        except BaseException as exc:  # noqa: BLE001 - every start failure must reach the parent
            self._crash(exc, phase="start")
            return
        finally:
            self.ctx.started.set()
        stats.started_at = now_text()
        stats.state = "running"

    def on_receive(self, message: Any) -> Any:
        reply = None
        if type(message) is Request:
            reply = message.reply
            message = message.body
        self._current_reply = reply
        result: Any
        try:
            match message:
                case Crash(reason=reason):
                    raise InjectedFault(reason)
                case Ping():
                    result = "pong"
                case _:
                    result = self.handle(message)
        except Refusal as refusal:
            self.ctx.stats.processed += 1
            if self._current_reply is not None:
                self._current_reply.fail(refusal)
            else:
                log.warning("%s refused a message nobody waits for: %s", self.path, refusal)
            return None
        except BaseException as exc:  # noqa: BLE001 - includes SystemExit raised by a handler
            pending = self._current_reply
            self._crash(exc, phase="receive")
            if pending is not None:
                pending.fail(ActorCrashed(self.path, f"{type(exc).__name__}: {exc}"))
            return None
        finally:
            self._current_reply = None
        self.ctx.stats.processed += 1
        if reply is not None and result is not DEFERRED:
            reply.resolve(result)
        return None

    def on_stop(self) -> None:
        self.ctx.stats.state = "stopped"
        failure = None
        try:
            self.teardown()
        except BaseException as exc:  # noqa: BLE001 - a teardown failure is logged; the stop goes on
            failure = failure_of(exc)
            log.warning("%s failed while stopping: %s", self.path, failure.message)
        self.system.directory.unbind(self.path, self.actor_ref, state="stopped")
        self._drain_mailbox()
        self._report_exit(failure)

    def on_failure(self, *exc_info: Any) -> None:  # pragma: no cover - handled in on_receive
        pass

    # -- internals ------------------------------------------------------------------------

    def _mailbox_depth(self) -> int:
        inbox = self.actor_inbox
        return inbox.qsize() if isinstance(inbox, queue.Queue) else 0

    def _crash(self, exc: BaseException, phase: str) -> None:
        failure = failure_of(exc)
        stats = self.ctx.stats
        stats.state = "failed"
        stats.last_failure = failure
        log.debug("%s crashed during %s", self.path, phase, exc_info=exc)
        self.system.directory.unbind(self.path, self.actor_ref, state="restarting")
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.teardown()
        except BaseException:
            log.debug("%s teardown after crash failed", self.path, exc_info=True)
        self._drain_mailbox()
        # Report last, as a clean stop does: the parent must not start a replacement while
        # this incarnation (for a supervisor: its children) is still tearing down.  The
        # safety sweep waits for this thread to end, so it never races this report.
        self._report_exit(failure)

    def _report_exit(self, failure: FailureInfo | None) -> None:
        if self._exit_reported:
            return
        self._exit_reported = True
        try:
            self.ctx.notify_parent(
                ChildExited(child_id=self.ctx.child_id, generation=self.ctx.generation, failure=failure)
            )
        except Exception:
            log.debug("%s could not report its exit", self.path, exc_info=True)

    def _drain_mailbox(self) -> None:
        """Fail every queued or postponed request now, rather than letting callers wait for a timeout."""
        gone = ActorUnavailable(self.path, "stopped")
        postponed, self._postponed = self._postponed, []
        self._fail_requests(postponed, gone)
        while True:
            try:
                envelope = self.actor_inbox.get_nowait()  # type: ignore[attr-defined]  # pykka's inbox is a queue.Queue (untyped)
            except queue.Empty:
                return
            message = envelope.message
            if type(message) is Request:
                message.reply.fail(gone)
            if envelope.reply_to is not None:
                if isinstance(message, pykka.messages._ActorStop):
                    envelope.reply_to.set(None)
                else:
                    envelope.reply_to.set_exception(exc_info=(ActorUnavailable, gone, None))

    @staticmethod
    def _fail_requests(envelopes: list[Any], error: BaseException) -> None:
        for envelope in envelopes:
            if type(envelope) is Request:
                envelope.reply.fail(error)
