"""The mailbox convention of docs/messages.md, checked on every actor module, and the
non-blocking ask it asks for, proven with real threads.

Every module under ``metawsm/actors/`` that defines a ``ManagedActor`` subclass declares its
mailbox at module level as ``<Name>Message = A | B | ...`` (frozen msgspec Structs), and its
actors dispatch with ``match message:`` over exactly those types: no ``isinstance(message, ...)``,
nothing matched that the mailbox does not declare, nothing declared that is never matched.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, UnionType
from typing import Any

import msgspec
import pykka
import pytest

import metawsm.actors
from metawsm.actors.bridge import ThreadReply
from metawsm.actors.errors import ActorUnavailable
from metawsm.actors.managed import DEFERRED, ActorContext, ManagedActor
from metawsm.actors.messages import Ping, Request
from metawsm.actors.runs.messages import RunCommand
from metawsm.actors.runs.supervisor import RunSupervisorMessage
from metawsm.actors.supervisor import ChildSpec, Supervisor
from metawsm.actors.system import ActorSystem, DefaultSupervision
from metawsm.api.runs_routes import RUN_ACTIONS
from metawsm.runs.model import RunActionRequest


def actor_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(metawsm.actors.__path__, "metawsm.actors."):
        if info.ispkg:
            continue
        module = importlib.import_module(info.name)
        if _actor_classes(module):
            names.append(info.name)
    return sorted(names)


def _tree(module: ModuleType) -> ast.Module:
    return ast.parse(Path(module.__file__ or "").read_text())


def _actor_classes(module: ModuleType) -> list[ast.ClassDef]:
    found = []
    for node in _tree(module).body:
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            if isinstance(cls, type) and issubclass(cls, ManagedActor):
                found.append(node)
    return found


def _mailbox(module: ModuleType) -> dict[str, type]:
    """The message types of every module-level ``<Name>Message = ...`` the module itself assigns."""
    members: dict[str, type] = {}
    for node in _tree(module).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.endswith("Message"):
                value = getattr(module, name)
                kinds = typing.get_args(value) if isinstance(value, UnionType) else (value,)
                members.update({kind.__name__: kind for kind in kinds})
    return members


def _class_names(pattern: ast.pattern) -> set[str]:
    names = set()
    for node in ast.walk(pattern):
        if isinstance(node, ast.MatchClass):
            cls = node.cls
            names.add(cls.id if isinstance(cls, ast.Name) else ast.unparse(cls).rsplit(".", 1)[-1])
    return names


DISPATCHERS = ("handle", "on_receive")  # where a message is dispatched (on_receive: the runtime's own)


def _dispatch(classes: list[ast.ClassDef]) -> tuple[set[str], list[str]]:
    """(types matched in ``match message:`` statements, ``isinstance(message, ...)`` calls in
    the dispatching methods)."""
    matched: set[str] = set()
    isinstance_calls = []
    for cls in classes:
        for node in ast.walk(cls):
            if isinstance(node, ast.Match) and isinstance(node.subject, ast.Name) and node.subject.id == "message":
                for case in node.cases:
                    matched |= _class_names(case.pattern)
        for method in cls.body:
            if isinstance(method, ast.FunctionDef) and method.name in DISPATCHERS:
                for node in ast.walk(method):
                    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                            and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "message"):
                        isinstance_calls.append(f"{cls.name}.{method.name}, line {node.lineno}")
    return matched, isinstance_calls


ACTOR_MODULES = actor_modules()


def test_the_check_sees_every_actor_module() -> None:
    expected = {
        "metawsm.actors.managed", "metawsm.actors.supervisor", "metawsm.actors.redis_server",
        "metawsm.actors.forum.broker", "metawsm.actors.forum.handler", "metawsm.actors.forum.intake",
        "metawsm.actors.forum.projection", "metawsm.actors.forum.relay",
        "metawsm.actors.runs.agent", "metawsm.actors.runs.run", "metawsm.actors.runs.supervisor",
    }
    assert expected <= set(ACTOR_MODULES)


@pytest.mark.parametrize("name", ACTOR_MODULES)
def test_actor_module_declares_its_mailbox_of_frozen_structs(name: str) -> None:
    mailbox = _mailbox(importlib.import_module(name))
    assert mailbox, f"{name} declares no `<Name>Message = A | B | ...` mailbox at module level"
    for kind_name, kind in mailbox.items():
        assert issubclass(kind, msgspec.Struct), f"{name}: {kind_name} is not a msgspec Struct"
        assert kind.__struct_config__.frozen, f"{name}: {kind_name} is not frozen"


@pytest.mark.parametrize("name", ACTOR_MODULES)
def test_actor_matches_exactly_its_mailbox_and_never_uses_isinstance(name: str) -> None:
    module = importlib.import_module(name)
    matched, isinstance_calls = _dispatch(_actor_classes(module))
    mailbox = set(_mailbox(module))
    assert not isinstance_calls, f"{name} dispatches with isinstance(message, ...): {isinstance_calls}"
    assert matched - mailbox == set(), f"{name} handles messages its mailbox does not declare"
    assert mailbox - matched == set(), f"{name} declares messages it never matches"


PYKKA_HOOKS = {"on_start", "on_receive", "on_stop", "on_failure"}  # ManagedActor's own, nobody else's


@pytest.mark.parametrize("name", ACTOR_MODULES)
def test_actor_never_shadows_a_pykka_attribute(name: str) -> None:
    # A method named like one of Pykka's (say ``_stop``, which Pykka calls to stop the actor)
    # silently replaces it.
    module = importlib.import_module(name)
    pykka_names = {n for n in dir(pykka.ThreadingActor) if not n.startswith("__")} - {"_abc_impl"}
    for node in _actor_classes(module):
        cls = getattr(module, node.name)
        allowed = PYKKA_HOOKS if cls is ManagedActor else set()
        shadowed = (set(vars(cls)) & pykka_names) - allowed
        assert not shadowed, f"{name}.{node.name} shadows Pykka's {sorted(shadowed)}"


def test_every_run_action_of_the_api_is_a_command_the_run_supervisor_handles() -> None:
    made = {type(make("run-1", RunActionRequest())) for make in RUN_ACTIONS.values()}
    assert made == set(typing.get_args(RunCommand))
    assert made <= set(typing.get_args(RunSupervisorMessage))


# -- the pattern: ask a child without blocking, postpone what must wait ------------------------


class Hold(msgspec.Struct, frozen=True):
    """Ask the child for an answer it gives only when told Release."""


class Release(msgspec.Struct, frozen=True):
    pass


class Work(msgspec.Struct, frozen=True):
    label: str


class _Held(msgspec.Struct, frozen=True):
    answer: Any


class Child(ManagedActor):
    def setup(self) -> None:
        self.holding: Any = None

    def handle(self, message: Any) -> Any:
        match message:
            case Hold():
                self.holding = self.defer_reply()
                return DEFERRED
            case Release():
                self.holding.resolve("held")
                return None
        return super().handle(message)


class Parent(Supervisor):
    """Asks its child with an answer that comes back as a message; Work waits for that answer."""

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx, children=[ChildSpec.of(Child, id="child")])
        self.waiting: Any = None
        self.done: list[str] = []

    def handle(self, message: Any) -> Any:
        match message:
            case Hold():
                self.waiting = self.defer_reply()
                self.tell_child("child", Request(message, self.reply_to_self(_Held, _Held)))
                return DEFERRED
            case _Held(answer=answer):
                reply, self.waiting = self.waiting, None
                reply.resolve(answer)
                self.replay_postponed()
                return None
            case Work() if self.waiting is not None:
                return self.postpone(message)
            case Work(label=label):
                self.done.append(label)
                return list(self.done)
        return super().handle(message)


@pytest.fixture
def family() -> Iterator[ActorSystem]:
    system = ActorSystem(DefaultSupervision())
    system.start(ChildSpec.of(Parent, id="root"))
    yield system
    system.stop()


def _send(system: ActorSystem, message: Any) -> ThreadReply:
    reply = ThreadReply()
    system.directory.lookup("root").tell(Request(message, reply))
    return reply


def test_a_parent_answers_while_its_child_works_and_postponed_work_follows_in_order(family) -> None:
    held, first, second = _send(family, Hold()), _send(family, Work("a")), _send(family, Work("b"))

    assert family.ask("root", Ping(), timeout=5) == "pong"  # not blocked waiting for the child
    assert not held.wait(0)[0] and not first.wait(0)[0]  # Work waits for the child's answer

    family.tell("root/child", Release())
    assert held.wait(5) == (True, "held")
    assert first.wait(5) == (True, ["a"])
    assert second.wait(5) == (True, ["a", "b"])


def test_postponed_requests_fail_fast_when_the_actor_stops(family) -> None:
    _send(family, Hold())
    postponed = _send(family, Work("a"))
    assert family.ask("root", Ping(), timeout=5) == "pong"  # Work was handled (postponed) before it
    family.stop()
    with pytest.raises(ActorUnavailable):
        postponed.wait(5)
