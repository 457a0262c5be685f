"""Every forum command in one table: its messages, its refusal code, its route and CLI command.

Two levels, because one API write may be several commands (``answer`` is ``add_post`` then
``change_state``):

* :class:`CommandSpec` — a command as it travels the bus: its body (whose msgspec tag is the
  command's name and topic), the event it produces, and any other event it may produce instead.
* :class:`WriteSpec` — a write the API accepts: its request type, the commands it becomes, the
  error code its refusals carry, its route and its ``metawsm forum`` command.

The tables that used to be kept in step by hand are derived from these two (the event type of a
command, the write of a request type, the failure code of a write).  The behaviour that differs
per command stays with its layer, in a table keyed by the types named here and checked against
this registry:

* ``metawsm/forum/commands.py``: ``PLANNERS``, request type → how the intake plans it (checked
  when that module is imported);
* ``metawsm/forum/write_model.py``: ``HANDLERS``, command body → check + apply (checked when that
  module is imported);
* ``metawsm/api/forum_routes.py``: a handler per write (checked when the routes are built);
* ``metawsm/cli/forum_cmd.py``: a command per write (checked by tests/test_forum_registry.py;
  the CLI cannot import this module and stay fast).

This module checks itself on import: a command body, event or request type missing from the
registry (or registered twice) fails at once, naming it.  The check needs only the unions in
``messages.py`` and ``requests.py``, which stay the msgspec definitions of what may travel.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from metawsm.forum.messages import (
    AddPost,
    AssignThread,
    ChangeState,
    CloseThread,
    CommandBody,
    ControlSignal,
    ControlSignalled,
    EventBody,
    OpenThread,
    PostAdded,
    PriorityChanged,
    SetPriority,
    StateChanged,
    ThreadAssigned,
    ThreadClosed,
    ThreadOpened,
)
from metawsm.forum.requests import (
    AddPostRequest,
    AnswerRequest,
    AssignRequest,
    ChangeStateRequest,
    CloseRequest,
    ControlSignalRequest,
    OpenThreadRequest,
    SetPriorityRequest,
    WriteRequest,
)

THREADS = "/api/v1/forum/threads"
THREAD = THREADS + "/{thread_id}"


def tag(struct_type: Any) -> str:
    """A tagged msgspec Struct's tag: a command's name, an event's type."""
    return str(struct_type.__struct_config__.tag)


@dataclass(frozen=True)
class CommandSpec:
    body: type  # the command payload Struct; its tag is the command name (and topic suffix)
    event: type  # the event payload Struct it produces; its tag is the envelope's event_type
    other_events: tuple[type, ...] = ()  # produced instead in some cases (change_state → closed)

    @property
    def name(self) -> str:
        return tag(self.body)

    @property
    def event_type(self) -> str:
        return tag(self.event)

    @property
    def events(self) -> tuple[type, ...]:
        return (self.event, *self.other_events)


@dataclass(frozen=True)
class WriteSpec:
    name: str  # how the intake and the write model name it in refusals (``for_command``)
    request: type  # the API body Struct (a member of ``requests.WriteRequest``)
    commands: tuple[CommandSpec, ...]  # what the intake enqueues, in order
    failure_code: str  # the error code of its refusals (docs/api.md, Errors), 400
    path: str  # POST route (metawsm/api/forum_routes.py)
    summary: str  # the route's OpenAPI summary
    cli: str  # ``metawsm forum <cli>`` (metawsm/cli/forum_cmd.py)


OPEN_THREAD = CommandSpec(OpenThread, ThreadOpened)
ADD_POST = CommandSpec(AddPost, PostAdded)
ASSIGN_THREAD = CommandSpec(AssignThread, ThreadAssigned)
CHANGE_STATE = CommandSpec(ChangeState, StateChanged, other_events=(ThreadClosed,))
SET_PRIORITY = CommandSpec(SetPriority, PriorityChanged)
CLOSE_THREAD = CommandSpec(CloseThread, ThreadClosed)
CONTROL_SIGNAL = CommandSpec(ControlSignal, ControlSignalled)

COMMANDS: tuple[CommandSpec, ...] = (
    OPEN_THREAD, ADD_POST, ASSIGN_THREAD, CHANGE_STATE, SET_PRIORITY, CLOSE_THREAD, CONTROL_SIGNAL,
)

WRITES: tuple[WriteSpec, ...] = (
    WriteSpec("open_thread", OpenThreadRequest, (OPEN_THREAD,), "forum_open_failed",
              THREADS, "Open a thread (ask)", cli="ask"),
    WriteSpec("add_post", AddPostRequest, (ADD_POST,), "forum_add_post_failed",
              THREAD + "/posts", "Add a post", cli="post"),
    WriteSpec("answer", AnswerRequest, (ADD_POST, CHANGE_STATE), "forum_add_post_failed",
              THREAD + "/answer", "Answer: post, then state answered", cli="answer"),
    WriteSpec("assign_thread", AssignRequest, (ASSIGN_THREAD,), "forum_assign_failed",
              THREAD + "/assign", "Assign the thread", cli="assign"),
    WriteSpec("change_state", ChangeStateRequest, (CHANGE_STATE,), "forum_state_failed",
              THREAD + "/state", "Change the thread's state", cli="state"),
    WriteSpec("set_priority", SetPriorityRequest, (SET_PRIORITY,), "forum_priority_failed",
              THREAD + "/priority", "Set the thread's priority", cli="priority"),
    WriteSpec("close_thread", CloseRequest, (CLOSE_THREAD,), "forum_close_failed",
              THREAD + "/close", "Close the thread", cli="close"),
    WriteSpec("control_signal", ControlSignalRequest, (CONTROL_SIGNAL,), "forum_control_signal_failed",
              "/api/v1/forum/control/signal", "Post a control signal", cli="signal"),
)

# -- derived tables --------------------------------------------------------------------------

COMMAND_BY_BODY: dict[type, CommandSpec] = {c.body: c for c in COMMANDS}
COMMAND_BY_NAME: dict[str, CommandSpec] = {c.name: c for c in COMMANDS}
EVENT_TYPE_OF_COMMAND: dict[str, str] = {c.name: c.event_type for c in COMMANDS}
WRITE_BY_NAME: dict[str, WriteSpec] = {w.name: w for w in WRITES}
WRITE_BY_REQUEST: dict[type, WriteSpec] = {w.request: w for w in WRITES}
FAILURE_CODES: dict[str, str] = {w.name: w.failure_code for w in WRITES}


def write_of(request: Any) -> WriteSpec:
    return WRITE_BY_REQUEST[type(request)]


def failure_code(write_name: str, default: str) -> str:
    """The error code a refused write reports; ``default`` for a name that is not a write."""
    return FAILURE_CODES.get(write_name, default)


class RegistryMismatch(RuntimeError):
    """A forum command is missing from the registry or from a table that must cover it."""


def require_all(where: str, table: dict[type, Any], kinds: typing.Iterable[type], what: str) -> None:
    """Fail, naming each missing or unknown type, unless ``table`` has exactly ``kinds`` as keys.

    ``where`` names the table (``metawsm/forum/write_model.py HANDLERS``), ``what`` the kind
    (``command body``) — the message says what to add where.
    """
    wanted = list(kinds)
    missing = [k.__name__ for k in wanted if k not in table]
    unknown = [k.__name__ for k in table if k not in wanted]
    problems = [f"{where} has no entry for {what} {name}" for name in missing]
    problems += [f"{where} has an entry for {name}, which is not a registered {what}" for name in unknown]
    if problems:
        raise RegistryMismatch("; ".join(problems) + " (see metawsm/forum/registry.py)")


def _duplicates(values: list[Any]) -> list[Any]:
    return sorted({v for v in values if values.count(v) > 1}, key=str)


def _check() -> None:
    problems: list[str] = []
    bodies = set(typing.get_args(CommandBody))
    events = set(typing.get_args(EventBody))
    requests = set(typing.get_args(WriteRequest))
    registered_bodies = [c.body for c in COMMANDS]
    problems += [f"command body {b.__name__} (messages.CommandBody) has no CommandSpec"
                 for b in bodies - set(registered_bodies)]
    problems += [f"CommandSpec {b.__name__} is not in messages.CommandBody" for b in set(registered_bodies) - bodies]
    produced = {e for c in COMMANDS for e in c.events}
    problems += [f"event {e.__name__} (messages.EventBody) is produced by no CommandSpec" for e in events - produced]
    problems += [f"event {e.__name__} of a CommandSpec is not in messages.EventBody" for e in produced - events]
    registered_requests = [w.request for w in WRITES]
    problems += [f"request {r.__name__} (requests.WriteRequest) has no WriteSpec"
                 for r in requests - set(registered_requests)]
    problems += [f"WriteSpec {r.__name__} is not in requests.WriteRequest" for r in set(registered_requests) - requests]
    used = {c.name for w in WRITES for c in w.commands}
    problems += [f"command {c.name} is part of no WriteSpec" for c in COMMANDS if c.name not in used]
    for label, values in (("command body", [b.__name__ for b in registered_bodies]),
                          ("request", [r.__name__ for r in registered_requests]),
                          ("write name", [w.name for w in WRITES]),
                          ("route path", [w.path for w in WRITES]),
                          ("CLI command", [w.cli for w in WRITES])):
        problems += [f"{label} {v} is registered twice" for v in _duplicates(values)]
    if problems:
        raise RegistryMismatch("forum registry: " + "; ".join(problems))


_check()
