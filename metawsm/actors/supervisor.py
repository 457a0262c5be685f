"""Supervisor actors with OTP semantics, built on :class:`ManagedActor`.

A supervisor starts its children from :class:`ChildSpec` s, in order, each synchronously
(the next child starts only after the previous one's ``setup()`` returned), so a later
child may rely on an earlier one.  When a child exits it applies the restart type and the
strategy:

* ``permanent`` children are always restarted, ``transient`` ones only after a failure,
  ``temporary`` ones never (their slot is dropped, as are transient ones that finish);
* ``one_for_one`` restarts the child alone, ``rest_for_one`` also the children started
  after it, ``one_for_all`` every child (others are stopped in reverse order first);
* at most ``max_restarts`` restarts within ``within_seconds``; one more and the supervisor
  stops its children and fails upward (for the root: the system reports ``failed``);
* the first restart after a quiet period is immediate; consecutive failures of one child
  are delayed by ``backoff_initial_ms`` doubling up to ``backoff_max_ms``.

A subclass that manages its own children (the RunSupervisor, a Run) uses the public API
below, on its own thread: :meth:`Supervisor.children`, :meth:`Supervisor.child`,
:meth:`Supervisor.start_child`, :meth:`Supervisor.remove_child` and
:meth:`Supervisor.tell_child`.  Slots and their refs stay private to this module.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import pykka

from metawsm.actors.errors import Refusal, SupervisorGaveUp
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.actors.messages import (
    ChildExited,
    FailureInfo,
    RestartChildren,
    StartChild,
    StopChild,
    SweepChildren,
)
from metawsm.actors.node import ActorNode
from metawsm.actors.scheduler import PacedTick
from metawsm.actors.stats import ActorStats
from metawsm.clock import now_text

log = logging.getLogger("metawsm.supervision")



class _SweepTick(msgspec.Struct, frozen=True):
    """The safety sweep's own timer; ticks of a superseded ``token`` are ignored."""

    token: int


# The mailbox of every supervisor (subclasses add their own messages in front of it).
# Tells: ChildExited (a child's exit report), RestartChildren (a backoff delay elapsed),
# SweepChildren (a sweep now, from outside), _SweepTick (the paced safety sweep).  Requests:
# StartChild -> the child's path (Refusal "conflict" / "start_failed"), StopChild -> True, or
# False when there was no such child.
SupervisorMessage = ChildExited | RestartChildren | SweepChildren | _SweepTick | StartChild | StopChild

# The safety sweep runs a second after anything happened to a child, then backs off (doubling)
# while it keeps finding every child as it was, up to SWEEP_IDLE_MAX_SECONDS: a supervisor at
# rest wakes up a few times a minute instead of every second.  Only a death that bypassed every
# report (the thread gone, no ChildExited) waits for it.
SWEEP_SECONDS = 1.0
SWEEP_IDLE_MAX_SECONDS = 8.0
START_TIMEOUT_SECONDS = 30.0


class RestartType(str, enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(str, enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


class ChildSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to (re)start one child.  ``factory(ctx)`` must start the actor and return its ref."""

    id: str
    factory: Any  # Callable[[ActorContext], pykka.ActorRef]
    name: str = ""
    kind: str = "actor"
    restart: RestartType = RestartType.PERMANENT
    shutdown_timeout: float = 5.0

    @classmethod
    def of(
        cls,
        actor_class: type[ManagedActor],
        *args: Any,
        id: str,
        name: str = "",
        restart: RestartType = RestartType.PERMANENT,
        shutdown_timeout: float = 5.0,
        **kwargs: Any,
    ) -> ChildSpec:
        def factory(ctx: ActorContext) -> pykka.ActorRef[Any]:
            return actor_class.start(ctx, *args, **kwargs)

        return cls(
            id=id,
            factory=factory,
            name=name or actor_class.__name__,
            kind=actor_class.kind,
            restart=restart,
            shutdown_timeout=shutdown_timeout,
        )


class _Slot:
    """A child position: survives restarts; the actor inside it is replaced."""

    def __init__(self, spec: ChildSpec, path: str) -> None:
        self.spec = spec
        self.path = path
        self.stats = ActorStats()
        self.ref: pykka.ActorRef[Any] | None = None
        self.generation = 0
        self.state = "stopped"
        self.consecutive_failures = 0
        self.last_start = 0.0
        self.restart_token = 0  # the pending delayed restart that may start this slot


class ChildInfo(msgspec.Struct, frozen=True):
    """A snapshot of one child, for supervisor subclasses (see :meth:`Supervisor.child`)."""

    id: str
    path: str
    state: str  # running | restarting | stopped | failed
    alive: bool  # an incarnation is running and can take messages


def node_for(name: str, path: str, kind: str, state: str, stats: ActorStats) -> ActorNode:
    if state == "running" and stats.state in ("starting", "failed", "stopped"):
        state = stats.state
    children = stats.children() if state in ("running", "starting") else []
    return ActorNode(
        name=name,
        path=path,
        kind=kind,
        state=state,  # type: ignore[arg-type]  # stats hold one of ActorNode's state literals
        urn=stats.urn,
        started_at=stats.started_at,
        restarts=stats.restarts,
        last_failure=stats.last_failure,
        processed=stats.processed,
        mailbox=stats.mailbox_depth() if state != "stopped" else 0,
        details=stats.details(),
        children=children,
    )


class Supervisor(ManagedActor):
    kind: ClassVar[str] = "supervisor"
    _child_events: int = 0  # child exits, restarts, starts and stops since the last sweep

    def __init__(
        self,
        ctx: ActorContext,
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        children: Sequence[ChildSpec] = (),
    ) -> None:
        super().__init__(ctx)
        self.strategy = Strategy(strategy)
        self._initial_specs = tuple(children)
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()  # guards _slots for cross-thread inspection
        self._restart_times: deque[float] = deque()
        self._restart_token = 0
        settings = ctx.system.supervision
        self.max_restarts = settings.max_restarts
        self.within_seconds = float(settings.within_seconds)
        self.backoff_initial = settings.backoff_initial_ms / 1000.0
        self.backoff_max = settings.backoff_max_ms / 1000.0

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self) -> None:
        self.ctx.stats.children = self.child_nodes
        self._child_events = 0  # child exits, restarts, starts and stops since the last sweep
        for spec in self._initial_specs:
            slot = self._add_slot(spec)
            self._start_slot(slot)
        self._sweeper = PacedTick(SWEEP_SECONDS, SWEEP_IDLE_MAX_SECONDS,
                                  lambda delay, token: self.tell_self_later(delay, _SweepTick(token)))
        self._sweeper.start()

    def teardown(self) -> None:
        # reverse start order: a child may rely on those started before it until it is gone
        self._stop_slots(list(reversed(self._slots)), final_state="stopped")

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy.value, "children": len(self._slots)}

    def child_nodes(self) -> list[ActorNode]:
        with self._lock:
            slots = list(self._slots)
        return [node_for(s.spec.name or s.spec.id, s.path, s.spec.kind, s.state, s.stats) for s in slots]

    # -- messages -------------------------------------------------------------------------

    def handle(self, message: Any) -> Any:
        match message:
            case ChildExited():
                self._child_events += 1
                self._on_child_exited(message)
            case RestartChildren(child_ids=child_ids, token=token):
                self._child_events += 1
                self._start_group([s for s in self._slots if s.spec.id in child_ids and s.restart_token == token])
            case SweepChildren():
                self._sweep()
            case _SweepTick(token=token):
                if self._sweeper.current(token):
                    events, self._child_events = self._child_events, 0
                    suspicious = self._sweep()
                    self._sweeper.done(active=bool(events or suspicious))
            case StartChild(spec=spec):
                return self.start_child(spec)
            case StopChild(child_id=child_id):
                return self.remove_child(child_id)
            case _:
                return super().handle(message)
        return None

    # -- children: the API for subclasses (call on this supervisor's own thread) ------------

    def children(self) -> list[ChildInfo]:
        """Every child, in start order."""
        return [self._info(slot) for slot in list(self._slots)]

    def child(self, child_id: str) -> ChildInfo | None:
        """The child with this id, or None when there is none (never started, or removed)."""
        slot = self._slot(child_id)
        return None if slot is None else self._info(slot)

    def start_child(self, spec: ChildSpec) -> str:
        """Add a child and start it (its ``setup()`` has returned when this returns); its path.

        Raises :class:`Refusal` ``conflict`` when a child with that id exists (even one waiting
        to restart) and ``start_failed`` when the factory itself failed.  A child whose
        ``setup()`` fails is started all the same and then handled like any failed child.
        """
        if any(s.spec.id == spec.id for s in self._slots):
            raise Refusal(f"child {spec.id} already exists under {self.path}", code="conflict")
        self._child_events += 1
        slot = self._add_slot(spec)
        try:
            self._start_slot(slot)
        except Exception as error:  # the factory itself failed: refuse, do not crash the siblings
            with self._lock:
                self._slots.remove(slot)
            self.system.directory.unbind(slot.path, state="stopped")
            raise Refusal(f"could not start {spec.id} under {self.path}: {error}", code="start_failed") from error
        return slot.path

    def remove_child(self, child_id: str) -> bool:
        """Stop the child (waiting up to its ``shutdown_timeout``) and forget its spec, so it is
        never restarted; False when there is no such child."""
        slot = self._slot(child_id)
        if slot is None:
            return False
        self._stop_slots([slot], final_state="stopped")
        with self._lock:
            self._slots.remove(slot)
        return True

    def tell_child(self, child_id: str, message: Any) -> bool:
        """Tell the child's current incarnation ``message`` (a ``Request`` for an ask whose
        answer comes back as a message: :meth:`ManagedActor.reply_to_self`); False when no
        incarnation is alive to take it.  Never wait for a child's answer on this thread."""
        slot = self._slot(child_id)
        return slot is not None and slot.ref is not None and _tell_alive(slot.ref, message)

    @staticmethod
    def _info(slot: _Slot) -> ChildInfo:
        ref = slot.ref
        return ChildInfo(id=slot.spec.id, path=slot.path, state=slot.state, alive=ref is not None and ref.is_alive())

    # -- restart machinery ----------------------------------------------------------------

    def _on_child_exited(self, message: ChildExited) -> None:
        slot = self._slot(message.child_id)
        if slot is None or message.generation != slot.generation or slot.state != "running":
            return  # stale report from an incarnation we already replaced or stopped
        failure = message.failure
        slot.ref = None
        if failure is not None:
            slot.stats.last_failure = failure
        restart = slot.spec.restart
        wanted = restart is RestartType.PERMANENT or (restart is RestartType.TRANSIENT and failure is not None)
        if not wanted:
            if failure is not None:
                log.warning("%s failed and is not restarted (%s): %s", slot.path, restart.value, failure.message)
            with self._lock:
                self._slots.remove(slot)
            self.system.directory.unbind(slot.path, state="stopped")
            return
        if failure is None:
            failure = FailureInfo(type="UnexpectedStop", message="stopped without being asked", at=now_text())
            slot.stats.last_failure = failure
        self._restart_after_failure(slot, failure)

    def _restart_after_failure(self, slot: _Slot, failure: FailureInfo) -> None:
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.within_seconds:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts:
            self._give_up(slot, failure)
            return
        self._restart_times.append(now)

        if self.strategy is Strategy.ONE_FOR_ONE:
            group = [slot]
        elif self.strategy is Strategy.REST_FOR_ONE:
            group = self._slots[self._slots.index(slot):]
        else:
            group = list(self._slots)
        others = [s for s in group if s is not slot]
        self._stop_slots(list(reversed(others)), final_state="restarting")
        for other in others:
            if other.spec.restart is RestartType.TEMPORARY:
                with self._lock:
                    self._slots.remove(other)
        group = [s for s in group if s in self._slots]

        if now - slot.last_start > self.within_seconds:
            slot.consecutive_failures = 0
        slot.consecutive_failures += 1
        steps = slot.consecutive_failures - 1
        # cap the exponent: after ~1000 straight failures 2**n no longer converts to a float
        delay = 0.0 if steps == 0 else min(self.backoff_initial * (2.0 ** min(steps - 1, 64)), self.backoff_max)
        for member in group:
            member.state = "restarting"
            member.stats.restarts += 1
            self.system.directory.unbind(member.path, state="restarting")
        log.warning(
            "actor %s failed (%s: %s); restarting %s in %.0f ms",
            slot.path, failure.type, failure.message,
            ", ".join(s.spec.id for s in group), delay * 1000,
        )
        self.system.events.actor_restarted(slot.path, failure)
        self._restart_token += 1
        for member in group:
            member.restart_token = self._restart_token  # supersedes an older pending restart
        if delay <= 0:
            self._start_group(group)
        else:
            ids = tuple(s.spec.id for s in group)
            token, me = self._restart_token, self.actor_ref
            self.system.scheduler.call_later(delay, lambda: _tell_alive(me, RestartChildren(ids, token)))

    def _give_up(self, slot: _Slot, failure: FailureInfo) -> None:
        reason = (
            f"supervisor {self.path} gave up: more than {self.max_restarts} restarts within "
            f"{self.within_seconds:g}s; last failure in {slot.path}: {failure.type}: {failure.message}"
        )
        log.error("%s", reason)
        slot.state = "failed"
        self._stop_slots(list(reversed(self._slots)), final_state="stopped")
        slot.state = "failed"
        raise SupervisorGaveUp(reason)

    def _sweep(self) -> int:
        """Report children found dead without a report; how many children were not alive."""
        suspicious = 0
        for slot in list(self._slots):
            if slot.state == "running" and slot.ref is not None and not slot.ref.is_alive():
                suspicious += 1
                thread = slot.stats.thread
                if thread is not None and thread.is_alive():
                    continue  # still in teardown; its own exit report is on the way
                # Queue behind any report the dead thread sent before it ended; a real report
                # is handled first and makes this one stale.
                self.tell_self(
                    ChildExited(
                        child_id=slot.spec.id,
                        generation=slot.generation,
                        failure=FailureInfo(
                            type="ExitedWithoutReport",
                            message="actor thread stopped without reporting",
                            at=now_text(),
                        ),
                    )
                )
        return suspicious

    # -- slot helpers ---------------------------------------------------------------------

    def _add_slot(self, spec: ChildSpec) -> _Slot:
        slot = _Slot(spec, f"{self.path}/{spec.id}")
        with self._lock:
            self._slots.append(slot)
        return slot

    def _slot(self, child_id: str) -> _Slot | None:
        for slot in self._slots:
            if slot.spec.id == child_id:
                return slot
        return None

    def _start_group(self, group: list[_Slot]) -> None:
        for slot in group:
            if slot in self._slots and slot.state != "running":
                self._start_slot(slot)

    def _start_slot(self, slot: _Slot) -> None:
        slot.generation += 1
        slot.last_start = time.monotonic()
        slot.stats.state = "starting"
        started = threading.Event()
        me = self.actor_ref
        ctx = ActorContext(
            system=self.system,
            path=slot.path,
            child_id=slot.spec.id,
            generation=slot.generation,
            stats=slot.stats,
            started=started,
            notify_parent=lambda msg: _tell_alive(me, msg),
        )
        slot.state = "running"
        ref = slot.spec.factory(ctx)
        slot.ref = ref
        self.system.directory.bind(slot.path, ref)
        if not started.wait(START_TIMEOUT_SECONDS):
            log.warning("%s is still starting after %.0fs", slot.path, START_TIMEOUT_SECONDS)

    def _stop_slots(self, slots: list[_Slot], final_state: str) -> None:
        for slot in slots:
            ref, slot.ref = slot.ref, None
            slot.generation += 1  # its exit report is now stale
            slot.state = final_state
            self.system.directory.unbind(slot.path, state=final_state)
            if ref is None or not ref.is_alive():
                continue
            try:
                ref.stop(block=True, timeout=slot.spec.shutdown_timeout)
            except pykka.Timeout:
                log.warning("%s did not stop within %.1fs", slot.path, slot.spec.shutdown_timeout)
            except pykka.ActorDeadError:
                pass


def _tell_alive(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Tell ``ref`` if it is alive; return False once it is dead (ends periodic ticks)."""
    try:
        ref.tell(message)
        return True
    except pykka.ActorDeadError:
        return False
