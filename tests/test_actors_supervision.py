"""Supervision of the actor runtime with real Pykka threads (no mocks).

Each test builds a small tree under a root :class:`Supervisor`, breaks something on purpose
and proves what the supervisor did by *incarnation*: every start of a child records its
actor URN in a :class:`Journal`, so "restarted" means "a new URN answers at the same path"
and "left alone" means "the same URN is still there".  All waiting goes through
:func:`metawsm.waiting.wait_until`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pykka
import pytest

from metawsm.actors import (
    ActorContext,
    ActorCrashed,
    ActorError,
    ActorSystem,
    ActorUnavailable,
    ChildSpec,
    DefaultSupervision,
    ManagedActor,
    Ping,
    Refusal,
    RestartType,
    Strategy,
    Supervisor,
)
from metawsm.actors.messages import StartChild, StopChild
from metawsm.waiting import wait_until

SMALL = DefaultSupervision(max_restarts=3, within_seconds=5, backoff_initial_ms=20, backoff_max_ms=200)


# -- messages the test actors understand --------------------------------------------------


class Echo(msgspec.Struct, frozen=True):
    value: Any


class Boom(msgspec.Struct, frozen=True):
    reason: str = "boom"


class Quit(msgspec.Struct, frozen=True):
    """Ask the actor to stop itself cleanly (an unexpected stop for its supervisor)."""


class Reject(msgspec.Struct, frozen=True):
    reason: str = "bad input"


class Die(msgspec.Struct, frozen=True):
    kind: str  # "exit" or "interrupt"


class Hold(msgspec.Struct, frozen=True):
    gate: Any  # threading.Event the handler waits on


# -- test doubles that are real actors ----------------------------------------------------


class Journal:
    """Thread-safe record of (event, path, urn, monotonic time) for every start and stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str, str, float]] = []

    def add(self, event: str, path: str, urn: str) -> None:
        with self._lock:
            self._entries.append((event, path, urn, time.monotonic()))

    def entries(self) -> list[tuple[str, str, str, float]]:
        with self._lock:
            return list(self._entries)

    def starts(self, path: str) -> list[tuple[str, str, str, float]]:
        return [e for e in self.entries() if e[0] == "start" and e[1] == path]

    def index(self, event: str, urn: str) -> int:
        for i, entry in enumerate(self.entries()):
            if entry[0] == event and entry[2] == urn:
                return i
        raise AssertionError(f"no {event} recorded for {urn}")


class Countdown:
    """``take()`` is true for the first ``n`` calls (e.g. the first n setups fail)."""

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self.left = n

    def take(self) -> bool:
        with self._lock:
            if self.left > 0:
                self.left -= 1
                return True
            return False


class Worker(ManagedActor):
    kind = "worker"

    def __init__(
        self,
        ctx: ActorContext,
        journal: Journal,
        setup_failures: Countdown | None = None,
        teardown_seconds: float = 0.0,
        teardown_gate: threading.Event | None = None,
    ) -> None:
        super().__init__(ctx)
        self.journal = journal
        self.setup_failures = setup_failures
        self.teardown_seconds = teardown_seconds
        self.teardown_gate = teardown_gate

    def setup(self) -> None:
        self.journal.add("start", self.path, self.actor_urn)
        if self.setup_failures is not None and self.setup_failures.take():
            raise RuntimeError("setup failed on purpose")

    def teardown(self) -> None:
        if self.teardown_gate is not None:
            self.teardown_gate.wait(10)
        if self.teardown_seconds:
            time.sleep(self.teardown_seconds)  # simulated slow cleanup (< 0.5 s)
        self.journal.add("stop", self.path, self.actor_urn)

    def handle(self, message: Any) -> Any:
        match message:
            case Echo(value=value):
                return value
            case Boom(reason=reason):
                raise RuntimeError(reason)
            case Quit():
                self.stop()
                return "bye"
            case Reject(reason=reason):
                raise Refusal(reason, code="bad_input")
            case Die(kind="exit"):
                raise SystemExit(3)
            case Die(kind="interrupt"):
                raise KeyboardInterrupt
            case Hold(gate=gate):
                gate.wait(10)
                return "released"
        return super().handle(message)


def worker(journal: Journal, id: str, **kwargs: Any) -> ChildSpec:
    return ChildSpec.of(Worker, journal, id=id, **kwargs)


def supervisor(id: str, children: list[ChildSpec], strategy: Strategy = Strategy.ONE_FOR_ONE, **kw: Any) -> ChildSpec:
    return ChildSpec.of(Supervisor, id=id, name=kw.pop("name", ""), strategy=strategy, children=children, **kw)


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def make_system() -> Iterator[Callable[..., ActorSystem]]:
    systems: list[ActorSystem] = []

    def make(
        children: list[ChildSpec],
        strategy: Strategy = Strategy.ONE_FOR_ONE,
        supervision: DefaultSupervision = SMALL,
    ) -> ActorSystem:
        system = ActorSystem(supervision=supervision)
        systems.append(system)
        system.start(supervisor("root", children, strategy, name="RootSupervisor"))
        return system

    yield make
    for system in systems:
        system.stop()


def answering(system: ActorSystem, path: str) -> bool:
    try:
        return system.ask(path, Ping(), timeout=1.0) == "pong"
    except ActorError:
        return False


def urn_of(system: ActorSystem, path: str) -> str | None:
    node = system.inspect().find(path)
    return node.urn if node is not None else None


def node_of(system: ActorSystem, path: str):
    node = system.inspect().find(path)
    assert node is not None, f"{path} is not in the tree"
    return node


def wait_new_incarnation(system: ActorSystem, path: str, old_urn: str | None, timeout: float = 5.0) -> str:
    """Wait until a different incarnation runs at ``path`` and answers there; return its URN."""

    def ready() -> str | None:
        node = system.inspect().find(path)
        if node is None or node.state != "running" or node.urn == old_urn:
            return None
        return node.urn if answering(system, path) else None

    return wait_until(ready, timeout=timeout, message=f"{path} was not replaced")


def crash_and_wait(system: ActorSystem, path: str) -> str:
    old = urn_of(system, path)
    system.crash(path)
    return wait_new_incarnation(system, path, old)


# -- strategies ---------------------------------------------------------------------------


def test_one_for_one_restarts_only_the_failed_child(make_system, journal) -> None:
    system = make_system([worker(journal, "a"), worker(journal, "b"), worker(journal, "c")])
    before = {p: urn_of(system, f"root/{p}") for p in "abc"}

    new_b = crash_and_wait(system, "root/b")

    assert new_b != before["b"]
    assert urn_of(system, "root/a") == before["a"]
    assert urn_of(system, "root/c") == before["c"]
    assert [node_of(system, f"root/{p}").restarts for p in "abc"] == [0, 1, 0]
    assert [len(journal.starts(f"root/{p}")) for p in "abc"] == [1, 2, 1]


def test_rest_for_one_restarts_the_failed_child_and_those_after_it(make_system, journal) -> None:
    system = make_system(
        [worker(journal, "a"), worker(journal, "b"), worker(journal, "c")], strategy=Strategy.REST_FOR_ONE
    )
    before = {p: urn_of(system, f"root/{p}") for p in "abc"}

    system.crash("root/b")
    wait_new_incarnation(system, "root/b", before["b"])
    wait_new_incarnation(system, "root/c", before["c"])

    assert urn_of(system, "root/a") == before["a"]
    assert [node_of(system, f"root/{p}").restarts for p in "abc"] == [0, 1, 1]
    assert [len(journal.starts(f"root/{p}")) for p in "abc"] == [1, 2, 2]
    # c (started after b) was stopped before being started again
    assert journal.index("stop", before["c"]) < journal.index("start", urn_of(system, "root/c"))


def test_one_for_all_restarts_every_child(make_system, journal) -> None:
    system = make_system(
        [worker(journal, "a"), worker(journal, "b"), worker(journal, "c")], strategy=Strategy.ONE_FOR_ALL
    )
    before = {p: urn_of(system, f"root/{p}") for p in "abc"}

    system.crash("root/b")
    for p in "abc":
        wait_new_incarnation(system, f"root/{p}", before[p])

    assert [node_of(system, f"root/{p}").restarts for p in "abc"] == [1, 1, 1]
    assert [len(journal.starts(f"root/{p}")) for p in "abc"] == [2, 2, 2]
    # only the failed child carries the failure
    assert node_of(system, "root/b").last_failure.type == "InjectedFault"
    assert node_of(system, "root/a").last_failure is None


# -- restart types ------------------------------------------------------------------------


def test_permanent_child_is_restarted_after_a_failure(make_system, journal) -> None:
    system = make_system([worker(journal, "p", restart=RestartType.PERMANENT)])
    old = urn_of(system, "root/p")

    with pytest.raises(ActorCrashed):
        system.ask("root/p", Boom("kaput"), timeout=5)
    wait_new_incarnation(system, "root/p", old)

    node = node_of(system, "root/p")
    assert node.restarts == 1
    assert node.last_failure.type == "RuntimeError" and node.last_failure.message == "kaput"


def test_permanent_child_is_restarted_after_a_clean_self_stop(make_system, journal) -> None:
    system = make_system([worker(journal, "p", restart=RestartType.PERMANENT)])
    old = urn_of(system, "root/p")

    assert system.ask("root/p", Quit(), timeout=5) == "bye"
    wait_new_incarnation(system, "root/p", old)

    node = node_of(system, "root/p")
    assert node.restarts == 1
    assert node.last_failure.type == "UnexpectedStop"
    assert system.ask("root/p", Echo("again"), timeout=5) == "again"


def test_transient_child_is_restarted_after_a_failure(make_system, journal) -> None:
    system = make_system([worker(journal, "t", restart=RestartType.TRANSIENT)])
    old = urn_of(system, "root/t")

    system.tell("root/t", Boom())
    wait_new_incarnation(system, "root/t", old)
    assert node_of(system, "root/t").restarts == 1


def test_transient_child_that_stops_cleanly_is_not_restarted(make_system, journal) -> None:
    system = make_system([worker(journal, "t", restart=RestartType.TRANSIENT), worker(journal, "other")])

    assert system.ask("root/t", Quit(), timeout=5) == "bye"
    wait_until(lambda: system.inspect().find("root/t") is None, message="transient slot still listed")

    with pytest.raises(ActorUnavailable):
        system.ask("root/t", Ping(), timeout=5)
    assert len(journal.starts("root/t")) == 1
    assert answering(system, "root/other")
    assert system.events.restarts_total == 0


@pytest.mark.parametrize("how", ["failure", "clean stop"])
def test_temporary_child_is_never_restarted(make_system, journal, how) -> None:
    system = make_system([worker(journal, "tmp", restart=RestartType.TEMPORARY), worker(journal, "other")])

    if how == "failure":
        system.tell("root/tmp", Boom())
    else:
        system.tell("root/tmp", Quit())
    wait_until(lambda: system.inspect().find("root/tmp") is None, message="temporary slot still listed")

    with pytest.raises(ActorUnavailable):
        system.ask("root/tmp", Ping(), timeout=5)
    assert len(journal.starts("root/tmp")) == 1
    assert system.events.restarts_total == 0
    assert answering(system, "root/other")


def test_transient_clean_stop_with_slow_teardown_is_not_mistaken_for_a_crash(make_system, journal) -> None:
    """The safety sweep must not treat a child still running ``teardown()`` as dead-without-report."""
    gate = threading.Event()
    system = make_system([worker(journal, "t", restart=RestartType.TRANSIENT, teardown_gate=gate)])
    ref = system.directory.get("root/t")

    system.tell("root/t", Quit())
    wait_until(lambda: not ref.is_alive(), message="child did not begin stopping")
    seen = system.inspect().processed
    # at least one safety sweep (every second) runs while the child is inside teardown();
    # sweeps are the only messages the root processes meanwhile
    wait_until(lambda: system.inspect().processed >= seen + 1, timeout=5, message="no sweep ran")
    gate.set()

    wait_until(lambda: system.inspect().find("root/t") is None, message="transient slot still listed")
    assert len(journal.starts("root/t")) == 1
    assert system.events.restarts_total == 0


# -- restart intensity and escalation -----------------------------------------------------


def test_root_gives_up_when_intensity_is_exceeded_and_the_system_fails(make_system, journal) -> None:
    system = make_system([worker(journal, "ok"), worker(journal, "bad", setup_failures=Countdown(10**6))])
    ok_urn = journal.starts("root/ok")[0][2]

    wait_until(system.failed.is_set, timeout=10, message="the system never reported failure")

    failure = system.failure
    assert failure is not None and failure.type == "SupervisorGaveUp"
    assert "gave up" in failure.message
    assert "more than 3 restarts within 5s" in failure.message
    assert "root/bad" in failure.message and "setup failed on purpose" in failure.message
    # 1 initial start + 3 restarts, then the 4th failure made the supervisor give up
    assert len(journal.starts("root/bad")) == 4
    # the sibling was stopped as the supervisor gave up
    wait_until(lambda: any(e[0] == "stop" and e[2] == ok_urn for e in journal.entries()))
    with pytest.raises(ActorUnavailable):
        system.ask("root/ok", Ping(), timeout=5)
    assert system.inspect().state == "failed"


def test_nested_supervisor_escalates_and_its_parent_restarts_it(make_system, journal) -> None:
    inner = supervisor("inner", [worker(journal, "w"), worker(journal, "w2")], name="InnerSupervisor")
    system = make_system([inner, worker(journal, "sibling")])
    inner_urn = urn_of(system, "root/inner")
    w2_urn = urn_of(system, "root/inner/w2")
    sibling_urn = urn_of(system, "root/sibling")

    for _ in range(3):  # max_restarts = 3: these are all tolerated
        crash_and_wait(system, "root/inner/w")
    assert urn_of(system, "root/inner") == inner_urn
    assert node_of(system, "root/inner/w").restarts == 3

    system.crash("root/inner/w")  # one too many: inner gives up and fails upward
    new_inner = wait_new_incarnation(system, "root/inner", inner_urn)
    wait_new_incarnation(system, "root/inner/w", None)
    wait_new_incarnation(system, "root/inner/w2", w2_urn)

    inner_node = node_of(system, "root/inner")
    assert inner_node.urn == new_inner
    assert inner_node.restarts == 1
    assert inner_node.last_failure.type == "SupervisorGaveUp"
    assert "root/inner/w" in inner_node.last_failure.message
    # the old w2 was stopped by the giving-up supervisor, before the new one started
    assert journal.index("stop", w2_urn) < journal.index("start", urn_of(system, "root/inner/w2"))
    # the fresh inner supervisor starts with fresh counters and budget
    assert node_of(system, "root/inner/w").restarts == 0
    assert urn_of(system, "root/sibling") == sibling_urn
    assert not system.failed.is_set()
    assert system.ask("root/inner/w", Echo(7), timeout=5) == 7


def test_crashing_a_supervisor_stops_its_old_children_before_the_new_ones_start(make_system, journal) -> None:
    kids = [worker(journal, k, teardown_seconds=0.05) for k in ("x", "y", "z")]
    system = make_system([supervisor("inner", kids)])
    old = {k: urn_of(system, f"root/inner/{k}") for k in "xyz"}

    system.crash("root/inner")
    for k in "xyz":
        wait_new_incarnation(system, f"root/inner/{k}", old[k])

    for k in "xyz":
        new = urn_of(system, f"root/inner/{k}")
        assert journal.index("stop", old[k]) < journal.index("start", new), f"two {k} ran at once"
        assert system.ask(f"root/inner/{k}", Echo(k), timeout=5) == k


# -- backoff ------------------------------------------------------------------------------


def test_backoff_delays_grow_and_reset_after_a_quiet_period(make_system, journal, caplog) -> None:
    settings = DefaultSupervision(max_restarts=10, within_seconds=1.0, backoff_initial_ms=100, backoff_max_ms=250)
    system = make_system([worker(journal, "w")], supervision=settings)
    caplog.set_level(logging.WARNING, logger="metawsm.supervision")

    def crash_once() -> float:
        old = urn_of(system, "root/w")
        crashed_at = time.monotonic()
        system.crash("root/w")
        new = wait_new_incarnation(system, "root/w", old)
        started_at = next(e[3] for e in journal.entries() if e[0] == "start" and e[2] == new)
        return started_at - crashed_at

    measured = [crash_once() for _ in range(4)]
    last_start = journal.starts("root/w")[-1][3]
    # a quiet period longer than within_seconds (a time condition, polled like any other)
    wait_until(lambda: time.monotonic() - last_start > 1.2, timeout=5)
    measured.append(crash_once())

    planned = [
        round(r.args[-1]) for r in caplog.records if r.name == "metawsm.supervision" and "restarting" in r.msg
    ]
    assert planned == [0, 100, 200, 250, 0]  # immediate, doubling, capped, reset
    d1, d2, d3, d4, d5 = measured
    assert d2 >= 0.09 and d3 >= 0.19 and d4 >= 0.24
    assert d1 < d2 < d3
    assert d5 < d3 and d1 < 0.09 and d5 < 0.09


# -- failure detection --------------------------------------------------------------------


def test_exception_in_setup_is_detected_and_restarted(make_system, journal) -> None:
    system = make_system([worker(journal, "flaky", setup_failures=Countdown(2))])

    wait_until(lambda: len(journal.starts("root/flaky")) == 3, message="not restarted after setup failures")
    wait_until(lambda: answering(system, "root/flaky"))
    node = node_of(system, "root/flaky")
    assert node.restarts == 2
    assert node.state == "running"
    assert node.last_failure.type == "RuntimeError"
    assert node.last_failure.message == "setup failed on purpose"


@pytest.mark.parametrize("kind,exc_name", [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt")])
def test_base_exception_in_handle_stops_only_that_actor(make_system, journal, kind, exc_name) -> None:
    system = make_system([worker(journal, "victim"), worker(journal, "sibling")])
    victim = urn_of(system, "root/victim")
    sibling = urn_of(system, "root/sibling")
    old_ref = system.directory.get("root/victim")

    started = time.monotonic()
    with pytest.raises(ActorCrashed, match=exc_name):
        system.ask("root/victim", Die(kind), timeout=5)
    assert time.monotonic() - started < 2

    assert system.ask("root/sibling", Echo("still here"), timeout=5) == "still here"
    wait_new_incarnation(system, "root/victim", victim)
    assert not old_ref.is_alive()
    assert urn_of(system, "root/sibling") == sibling
    assert pykka.ActorRegistry.get_by_urn(sibling) is not None  # Pykka's stop_all never ran
    assert node_of(system, "root/victim").last_failure.type == exc_name
    assert node_of(system, "root/sibling").restarts == 0


def test_child_that_dies_without_reporting_is_found_by_the_sweep(make_system, journal) -> None:
    def silent(ctx: ActorContext) -> pykka.ActorRef[Any]:
        return Worker.start(dataclasses.replace(ctx, notify_parent=lambda message: None), journal)

    system = make_system([ChildSpec(id="silent", factory=silent, name="Silent", kind="worker")])
    old = urn_of(system, "root/silent")

    system.tell("root/silent", Quit())
    wait_new_incarnation(system, "root/silent", old, timeout=10)
    assert node_of(system, "root/silent").last_failure.type == "ExitedWithoutReport"


# -- addressing and failing fast ----------------------------------------------------------


def test_restarted_child_is_reachable_by_the_same_path(make_system, journal) -> None:
    system = make_system([worker(journal, "w")])
    assert system.ask("root/w", Echo(1), timeout=5) == 1
    first = urn_of(system, "root/w")

    for n in range(2, 4):
        crash_and_wait(system, "root/w")
        assert system.ask("root/w", Echo(n), timeout=5) == n

    assert urn_of(system, "root/w") != first
    assert node_of(system, "root/w").restarts == 2


def test_ask_to_a_restarting_or_missing_actor_fails_fast(make_system, journal) -> None:
    slow = DefaultSupervision(max_restarts=10, within_seconds=5, backoff_initial_ms=2000, backoff_max_ms=2000)
    system = make_system([worker(journal, "w")], supervision=slow)
    crash_and_wait(system, "root/w")  # first restart: immediate
    system.crash("root/w")  # second: delayed by 2 s
    wait_until(lambda: node_of(system, "root/w").state == "restarting")

    for path in ("root/w", "root/nobody"):
        started = time.monotonic()
        with pytest.raises(ActorUnavailable):
            system.ask(path, Ping(), timeout=5)
        assert time.monotonic() - started < 0.5
    with pytest.raises(ActorUnavailable):
        system.crash("root/w")


def test_ask_that_crashes_the_actor_fails_fast_with_actor_crashed(make_system, journal) -> None:
    system = make_system([worker(journal, "w")])
    started = time.monotonic()
    with pytest.raises(ActorCrashed, match="boom"):
        system.ask("root/w", Boom("boom"), timeout=10)
    assert time.monotonic() - started < 2


def test_request_queued_behind_a_crash_fails_fast(make_system, journal) -> None:
    system = make_system([worker(journal, "w")])
    gate = threading.Event()
    system.tell("root/w", Hold(gate))
    system.tell("root/w", Boom("queued crash"))

    outcome: dict[str, Any] = {}

    def asker() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = system.ask("root/w", Echo("late"), timeout=10)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=asker)
    thread.start()
    wait_until(lambda: node_of(system, "root/w").mailbox >= 2, message="request not queued")
    gate.set()
    wait_until(lambda: "elapsed" in outcome and not thread.is_alive(), timeout=10)

    assert isinstance(outcome.get("error"), ActorUnavailable), outcome
    assert outcome["elapsed"] < 3


# -- refusals, fault injection, dynamic children ------------------------------------------


def test_refusal_goes_back_to_the_caller_and_the_actor_keeps_running(make_system, journal) -> None:
    system = make_system([worker(journal, "w")])
    urn = urn_of(system, "root/w")
    before = node_of(system, "root/w").processed

    with pytest.raises(Refusal) as refused:
        system.ask("root/w", Reject("not like that"), timeout=5)

    assert refused.value.code == "bad_input" and refused.value.message == "not like that"
    node = node_of(system, "root/w")
    assert node.processed == before + 1
    assert node.restarts == 0 and node.last_failure is None
    assert node.urn == urn
    assert system.ask("root/w", Echo("fine"), timeout=5) == "fine"


def test_fault_injection_restarts_the_actor(make_system, journal) -> None:
    system = make_system([worker(journal, "w")])
    old = urn_of(system, "root/w")

    system.crash("root/w", reason="operator test")
    new = wait_new_incarnation(system, "root/w", old)

    node = node_of(system, "root/w")
    assert new != old and node.restarts == 1
    assert node.last_failure.type == "InjectedFault"
    assert node.last_failure.message == "operator test"
    assert system.events.restarts_total == 1


def test_start_and_stop_children_at_run_time(make_system, journal) -> None:
    system = make_system([worker(journal, "fixed")])

    path = system.ask("root", StartChild(worker(journal, "dyn", restart=RestartType.TRANSIENT)), timeout=5)
    assert path == "root/dyn"
    assert system.ask("root/dyn", Echo("hi"), timeout=5) == "hi"
    assert [c.path for c in system.inspect().children] == ["root/fixed", "root/dyn"]

    with pytest.raises(Refusal) as refused:
        system.ask("root", StartChild(worker(journal, "dyn")), timeout=5)
    assert refused.value.code == "conflict"

    crash_and_wait(system, "root/dyn")  # a dynamic child is supervised like any other
    dyn_urn = urn_of(system, "root/dyn")

    assert system.ask("root", StopChild("dyn"), timeout=5) is True
    assert any(e[0] == "stop" and e[2] == dyn_urn for e in journal.entries())
    assert system.inspect().find("root/dyn") is None
    with pytest.raises(ActorUnavailable):
        system.ask("root/dyn", Ping(), timeout=5)
    assert system.ask("root", StopChild("dyn"), timeout=5) is False
    assert answering(system, "root/fixed")


def test_a_delayed_restart_survives_another_childs_restart(make_system, journal) -> None:
    """A pending backoff restart of one child must not be cancelled when a sibling fails."""
    settings = DefaultSupervision(max_restarts=10, within_seconds=5, backoff_initial_ms=300, backoff_max_ms=300)
    system = make_system([worker(journal, "a"), worker(journal, "b")], supervision=settings)
    a_urn = crash_and_wait(system, "root/a")  # first restart: immediate

    system.crash("root/a")  # second restart of a: delayed 300 ms
    wait_until(lambda: node_of(system, "root/a").state == "restarting")
    crash_and_wait(system, "root/b")  # b's first restart is immediate, while a still waits

    wait_new_incarnation(system, "root/a", a_urn)
    assert node_of(system, "root/a").restarts == 2


def test_a_long_run_of_consecutive_failures_does_not_break_the_backoff(make_system, journal) -> None:
    """Over a thousand back-to-back failures: the backoff exponent must not overflow."""
    endless = DefaultSupervision(max_restarts=1_000_000, within_seconds=60, backoff_initial_ms=0, backoff_max_ms=0)
    failures = 1100
    system = make_system([worker(journal, "w", setup_failures=Countdown(failures))], supervision=endless)

    wait_until(lambda: system.failed.is_set() or answering(system, "root/w"), timeout=60)

    assert not system.failed.is_set(), system.failure
    assert node_of(system, "root/w").restarts == failures


def test_shutdown_stops_children_in_reverse_start_order(journal) -> None:
    system = ActorSystem(supervision=SMALL)
    inner = supervisor("inner", [worker(journal, "i1"), worker(journal, "i2")])
    system.start(supervisor("root", [worker(journal, "a"), inner, worker(journal, "b")]))
    try:
        starts = [e[1] for e in journal.entries() if e[0] == "start"]
        assert starts == ["root/a", "root/inner/i1", "root/inner/i2", "root/b"]
    finally:
        system.stop()

    stops = [e[1] for e in journal.entries() if e[0] == "stop"]
    assert stops == ["root/b", "root/inner/i2", "root/inner/i1", "root/a"]
    assert system.directory.paths() == []
