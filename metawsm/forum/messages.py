"""Forum commands and events as msgspec Structs: what travels through the outbox and streams.

A command and the event it produces share one ``event_id``: the id is assigned at intake,
so a caller can wait for "its" event and a re-delivered command is recognised.  Which event a
command produces, and everything else known per command, is in :mod:`metawsm.forum.registry`.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec

EVENT_VERSION = 1


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    event_id: str
    event_type: str
    event_version: int = EVENT_VERSION
    occurred_at: str
    thread_id: str
    run_id: str = ""
    ticket: str
    agent_name: str = ""
    actor_type: str
    actor_name: str = ""
    correlation_id: str = ""
    causation_id: str = ""


# -- command payloads (one per command topic) -------------------------------------------------


class OpenThread(msgspec.Struct, tag="open_thread", kw_only=True):
    title: str
    body: str
    priority: str = "normal"
    post_id: str


class AddPost(msgspec.Struct, tag="add_post", kw_only=True):
    body: str
    post_id: str


class AssignThread(msgspec.Struct, tag="assign_thread", kw_only=True):
    assignee_type: str
    assignee_name: str
    assignment_note: str = ""


class ChangeState(msgspec.Struct, tag="change_state", kw_only=True):
    to_state: str


class SetPriority(msgspec.Struct, tag="set_priority", kw_only=True):
    priority: str


class CloseThread(msgspec.Struct, tag="close_thread", kw_only=True):
    pass


class ControlSignal(msgspec.Struct, tag="control_signal", kw_only=True):
    control_type: str
    payload: dict[str, Any]
    post_id: str


CommandBody = OpenThread | AddPost | AssignThread | ChangeState | SetPriority | CloseThread | ControlSignal


class CommandMessage(msgspec.Struct, tag="command", kw_only=True):
    envelope: Envelope
    command: CommandBody

    @property
    def name(self) -> str:
        return str(type(self.command).__struct_config__.tag)


# -- event payloads ---------------------------------------------------------------------------


class ThreadOpened(msgspec.Struct, tag="forum.thread.opened", kw_only=True):
    title: str
    body: str
    priority: str
    state: str
    post_id: str
    is_control: bool = False


class PostAdded(msgspec.Struct, tag="forum.post.added", kw_only=True):
    post_id: str
    body: str


class ThreadAssigned(msgspec.Struct, tag="forum.assigned", kw_only=True):
    assignee_type: str
    assignee_name: str
    assignment_note: str = ""


class StateChanged(msgspec.Struct, tag="forum.state.changed", kw_only=True):
    from_state: str
    to_state: str
    priority: str  # unchanged; carried so projections need no state of their own to key on it


class PriorityChanged(msgspec.Struct, tag="forum.priority.changed", kw_only=True):
    from_priority: str
    to_priority: str
    state: str  # unchanged, see StateChanged.priority


class ThreadClosed(msgspec.Struct, tag="forum.thread.closed", kw_only=True):
    from_state: str
    priority: str


class ControlSignalled(msgspec.Struct, tag="forum.control.signal", kw_only=True):
    """A control signal, stored as a post on the (run, agent) control thread.

    ``opens_thread`` is true for the first signal of a (run, agent): this one event then also
    creates the control thread, so a command still produces exactly one event.
    """

    control_type: str
    payload: dict[str, Any]
    post_id: str
    body: str
    opens_thread: bool = False
    title: str = ""
    state: str = "new"
    priority: str = "normal"


EventBody = (
    ThreadOpened | PostAdded | ThreadAssigned | StateChanged | PriorityChanged | ThreadClosed | ControlSignalled
)


class EventMessage(msgspec.Struct, tag="event", kw_only=True):
    sequence: int
    envelope: Envelope
    payload: EventBody


BusMessage = CommandMessage | EventMessage

EVENT_TYPES: tuple[str, ...] = tuple(
    str(t.__struct_config__.tag) for t in typing.get_args(EventBody)
)
COMMAND_NAMES: tuple[str, ...] = tuple(
    str(t.__struct_config__.tag) for t in typing.get_args(CommandBody)
)

_encoder = msgspec.json.Encoder()
_bus_decoder = msgspec.json.Decoder(BusMessage)
_event_body_decoder = msgspec.json.Decoder(EventBody)


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def decode_bus_message(data: bytes | str) -> CommandMessage | EventMessage:
    return _bus_decoder.decode(data)


def decode_event_body(data: bytes | str) -> Any:
    return _event_body_decoder.decode(data)
