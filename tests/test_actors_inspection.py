"""Inspection of a live actor tree: ``system.inspect()`` and ``system.summary()``.

Inspection reads counters each actor keeps in its slot (no mailbox round trip), so it must
answer while an actor is blocked, and its numbers must follow what the actors really did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from metawsm.actors import (
    ActorContext,
    ActorError,
    ActorNode,
    ActorSystem,
    ChildSpec,
    DefaultSupervision,
    ManagedActor,
    Ping,
    Refusal,
    Strategy,
    Supervisor,
)
from metawsm.clock import parse_time
from metawsm.waiting import wait_until

SMALL = DefaultSupervision(max_restarts=3, within_seconds=5, backoff_initial_ms=20, backoff_max_ms=200)


class Echo(msgspec.Struct, frozen=True):
    value: Any


class Hold(msgspec.Struct, frozen=True):
    gate: Any  # threading.Event


class Reject(msgspec.Struct, frozen=True):
    pass


class Counter(ManagedActor):
    kind = "counter"

    def __init__(self, ctx: ActorContext, broken_describe: bool = False) -> None:
        super().__init__(ctx)
        self.seen = 0
        self.broken_describe = broken_describe

    def handle(self, message: Any) -> Any:
        match message:
            case Echo(value=value):
                self.seen += 1
                return value
            case Hold(gate=gate):
                gate.wait(10)
                return "released"
            case Reject():
                raise Refusal("no")
        return super().handle(message)

    def describe(self) -> dict[str, Any]:
        if self.broken_describe:
            raise ValueError("describe is broken")
        return {"seen": self.seen}


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    system = ActorSystem(supervision=SMALL)
    inner = ChildSpec.of(
        Supervisor,
        id="inner",
        name="InnerSupervisor",
        strategy=Strategy.REST_FOR_ONE,
        children=[ChildSpec.of(Counter, id="c1"), ChildSpec.of(Counter, id="c2", name="Counter[two]")],
    )
    root = ChildSpec.of(
        Supervisor,
        id="root",
        name="RootSupervisor",
        strategy=Strategy.ONE_FOR_ONE,
        children=[ChildSpec.of(Counter, id="a"), inner],
    )
    try:
        system.start(root)
        yield system
    finally:
        system.stop()


def node(system: ActorSystem, path: str) -> ActorNode:
    found = system.inspect().find(path)
    assert found is not None, f"{path} is not in the tree"
    return found


def answering(system: ActorSystem, path: str) -> bool:
    try:
        return system.ask(path, Ping(), timeout=1.0) == "pong"
    except ActorError:
        return False


def test_inspect_returns_the_whole_tree_with_every_field(system: ActorSystem) -> None:
    tree = system.inspect()

    assert isinstance(tree, ActorNode)
    assert (tree.name, tree.path, tree.kind, tree.state) == ("RootSupervisor", "root", "supervisor", "running")
    assert [c.path for c in tree.children] == ["root/a", "root/inner"]
    assert [n.path for n in tree.walk()] == ["root", "root/a", "root/inner", "root/inner/c1", "root/inner/c2"]
    assert tree.details == {"strategy": "one_for_one", "children": 2}

    inner = node(system, "root/inner")
    assert (inner.name, inner.kind) == ("InnerSupervisor", "supervisor")
    assert inner.details == {"strategy": "rest_for_one", "children": 2}

    c2 = node(system, "root/inner/c2")
    assert (c2.name, c2.kind, c2.state) == ("Counter[two]", "counter", "running")
    assert node(system, "root/inner/c1").name == "Counter"
    for n in tree.walk():
        assert n.state == "running"
        assert n.urn.startswith("urn:uuid:")
        assert n.started_at is not None and parse_time(n.started_at).tzinfo is not None
        assert n.restarts == 0 and n.last_failure is None
        assert n.mailbox == 0
    assert c2.processed == 0 and c2.details == {"seen": 0}


def test_processed_counts_answered_messages_and_refusals(system: ActorSystem) -> None:
    for i in range(5):
        assert system.ask("root/a", Echo(i), timeout=5) == i
    with pytest.raises(Refusal):
        system.ask("root/a", Reject(), timeout=5)

    a = node(system, "root/a")
    assert a.processed == 6
    assert a.details == {"seen": 5}
    assert a.restarts == 0 and a.last_failure is None
    assert node(system, "root/inner/c1").processed == 0


def test_restarts_and_last_failure_follow_crashes(system: ActorSystem) -> None:
    before = node(system, "root/inner/c1")
    system.crash("root/inner/c1", reason="first")
    wait_until(lambda: node(system, "root/inner/c1").urn != before.urn and answering(system, "root/inner/c1"))

    after = node(system, "root/inner/c1")
    assert after.restarts == 1
    assert after.last_failure is not None
    assert (after.last_failure.type, after.last_failure.message) == ("InjectedFault", "first")
    assert parse_time(after.last_failure.at) >= parse_time(before.started_at)
    assert parse_time(after.started_at) >= parse_time(after.last_failure.at)
    # rest_for_one: c2 was restarted with it (no failure of its own); a was left alone
    c2 = node(system, "root/inner/c2")
    assert c2.restarts == 1 and c2.last_failure is None
    assert node(system, "root/a").restarts == 0

    system.crash("root/inner/c1", reason="second")
    wait_until(lambda: node(system, "root/inner/c1").restarts == 2 and answering(system, "root/inner/c1"))
    assert node(system, "root/inner/c1").last_failure.message == "second"
    assert system.summary()["restarts_total"] == 2


def test_mailbox_depth_shows_queued_messages_while_the_actor_is_busy(system: ActorSystem) -> None:
    gate = threading.Event()
    system.tell("root/a", Hold(gate))
    wait_until(lambda: node(system, "root/a").mailbox == 0 and not gate.is_set())
    for i in range(3):
        system.tell("root/a", Echo(i))

    busy = wait_until(lambda: (n := node(system, "root/a")).mailbox == 3 and n)
    assert busy.processed == 0  # still inside the first message
    started = time.monotonic()
    system.inspect()  # answers without going through the blocked mailbox
    assert time.monotonic() - started < 0.5

    gate.set()
    done = wait_until(lambda: (n := node(system, "root/a")).processed == 4 and n)
    assert done.mailbox == 0
    assert done.details == {"seen": 3}


def test_tree_encodes_as_json_and_decodes_back(system: ActorSystem) -> None:
    system.crash("root/a")
    wait_until(lambda: node(system, "root/a").restarts == 1 and answering(system, "root/a"))
    tree = system.inspect()

    encoded = msgspec.json.encode(tree)
    decoded = msgspec.json.decode(encoded, type=ActorNode)
    assert decoded == tree

    plain = msgspec.json.decode(encoded)
    assert plain["path"] == "root"
    a = plain["children"][0]
    assert set(a) >= {
        "name", "path", "kind", "state", "started_at", "restarts", "last_failure", "processed", "mailbox",
    }
    assert a["last_failure"]["type"] == "InjectedFault"
    assert plain["children"][1]["children"][1]["name"] == "Counter[two]"


def test_summary_counts_nodes_states_and_restarts() -> None:
    slow = DefaultSupervision(max_restarts=10, within_seconds=5, backoff_initial_ms=2000, backoff_max_ms=2000)
    system = ActorSystem(supervision=slow)
    try:
        system.start(
            ChildSpec.of(
                Supervisor, id="root", children=[ChildSpec.of(Counter, id="x"), ChildSpec.of(Counter, id="y")]
            )
        )
        assert system.summary() == {"total": 3, "alive": 3, "restarting": 0, "restarts_total": 0}

        first = node(system, "root/x").urn
        system.crash("root/x")  # immediate restart
        wait_until(lambda: node(system, "root/x").urn != first and answering(system, "root/x"))
        system.crash("root/x")  # the second waits 2 s: visible as restarting
        wait_until(lambda: node(system, "root/x").state == "restarting")

        assert system.summary() == {"total": 3, "alive": 2, "restarting": 1, "restarts_total": 2}
        x = node(system, "root/x")
        assert x.mailbox == 0 and x.restarts == 2
    finally:
        system.stop()


def test_a_failing_describe_does_not_break_inspection() -> None:
    system = ActorSystem(supervision=SMALL)
    try:
        system.start(
            ChildSpec.of(Supervisor, id="root", children=[ChildSpec.of(Counter, True, id="broken")])
        )
        broken = node(system, "root/broken")
        assert broken.state == "running"
        assert "describe is broken" in broken.details["describe_error"]
        msgspec.json.encode(system.inspect())
    finally:
        system.stop()


def test_root_reports_failed_after_giving_up() -> None:
    system = ActorSystem(supervision=SMALL)
    try:
        system.start(ChildSpec.of(Supervisor, id="root", children=[ChildSpec.of(Counter, id="w")]))
        for _ in range(4):
            urn = node(system, "root/w").urn
            system.crash("root/w")
            wait_until(
                lambda: system.failed.is_set()
                or (node(system, "root/w").urn != urn and answering(system, "root/w"))
            )
        wait_until(system.failed.is_set)

        tree = system.inspect()
        assert tree.state == "failed"
        assert tree.children == []
        assert system.summary()["alive"] == 0
        msgspec.json.encode(tree)
    finally:
        system.stop()
