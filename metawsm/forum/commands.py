"""Turn API write requests into validated, id-stamped command messages.

This is the intake's pure half: it validates input that does not depend on state (required
text, enum values, control payloads) and assigns ``thread_id``/``event_id``/``post_id`` and
correlation ids.  The checks against current state live in :mod:`metawsm.forum.write_model`.

Each write request has one planner in ``PLANNERS``, checked against
:mod:`metawsm.forum.registry` on import; the event type and the refusal code of each write come
from the registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from metawsm import ids
from metawsm.clock import now_text
from metawsm.forum import registry, rules
from metawsm.forum.enums import ActorType, parse_enum
from metawsm.forum.errors import ForumError, for_command
from metawsm.forum.messages import (
    AddPost,
    AssignThread,
    ChangeState,
    CloseThread,
    CommandBody,
    CommandMessage,
    ControlSignal,
    Envelope,
    OpenThread,
    SetPriority,
)
from metawsm.forum.requests import (
    ActorFields,
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

_THREAD_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class PlannedWrite(msgspec.Struct, frozen=True):
    """What the intake will enqueue for one request; the caller waits for ``wait_event_id``."""

    thread_id: str
    commands: list[CommandMessage]

    @property
    def wait_event_id(self) -> str:
        return self.commands[-1].envelope.event_id


# request, target thread id, now, actor type → the write's command messages
Planner = Callable[[Any, str, str, str], PlannedWrite]


def plan(request: WriteRequest, thread_id: str = "", default_actor_type: str = "human") -> PlannedWrite:
    """Validate ``request`` and build its command message(s); refusals carry the write's code."""
    write = registry.write_of(request)
    try:
        now = now_text()
        actor_type = rules.actor_type(request.actor_type, default_actor_type)
        return PLANNERS[write.request](request, thread_id, now, actor_type)
    except ForumError as error:
        raise for_command(error, write.name) from None


def _plan_open(request: OpenThreadRequest, _thread_id: str, now: str, actor_type: str) -> PlannedWrite:
    new_id = request.thread_id.strip() or ids.thread_id()
    if not _THREAD_ID.match(new_id):
        raise ForumError("forum thread_id may only contain letters, digits and _ . : - (max 128)")
    command = OpenThread(
        title=rules.required_text(request.title, "forum thread title"),
        body=rules.required_text(request.body, "forum thread body"),
        priority=rules.priority(request.priority),
        post_id=ids.post_id(),
    )
    envelope = _envelope(
        request, "open_thread", new_id, now, actor_type,
        ticket=rules.required_text(request.ticket, "forum thread ticket"),
        run_id=request.run_id.strip(), agent_name=request.agent_name.strip(),
    )
    return PlannedWrite(new_id, [CommandMessage(envelope=envelope, command=command)])


def _target(thread_id: str) -> str:
    target = thread_id.strip()
    if not target:
        raise ForumError("forum thread_id is required")
    return target


def _plan_answer(request: AnswerRequest, thread_id: str, now: str, actor_type: str) -> PlannedWrite:
    target = _target(thread_id)
    body = rules.required_text(request.body, "forum post body")
    post_env = _envelope(request, "add_post", target, now, actor_type)
    state_env = _envelope(request, "change_state", target, now, actor_type)
    state_env = msgspec.structs.replace(
        state_env, correlation_id=post_env.correlation_id, causation_id=post_env.event_id
    )
    return PlannedWrite(
        target,
        [
            CommandMessage(envelope=post_env, command=AddPost(body=body, post_id=ids.post_id())),
            CommandMessage(envelope=state_env, command=ChangeState(to_state="answered")),
        ],
    )


def _addressed(build: Callable[[Any], CommandBody]) -> Planner:
    """The planner of a write that is one command to an existing thread, built by ``build``."""

    def planner(request: ActorFields, thread_id: str, now: str, actor_type: str) -> PlannedWrite:
        target = _target(thread_id)
        command = build(request)
        envelope = _envelope(request, registry.tag(type(command)), target, now, actor_type)
        return PlannedWrite(target, [CommandMessage(envelope=envelope, command=command)])

    return planner


def _add_post(request: AddPostRequest) -> AddPost:
    return AddPost(body=rules.required_text(request.body, "forum post body"), post_id=ids.post_id())


def _assign(request: AssignRequest) -> AssignThread:
    return AssignThread(
        assignee_type=parse_enum(ActorType, request.assignee_type, "assignee_type").value,
        assignee_name=rules.required_text(request.assignee_name, "forum assignee_name"),
        assignment_note=request.assignment_note.strip(),
    )


def _change_state(request: ChangeStateRequest) -> ChangeState:
    return ChangeState(to_state=rules.thread_state(request.to_state))


def _set_priority(request: SetPriorityRequest) -> SetPriority:
    return SetPriority(priority=rules.priority(request.priority))


def _close(_request: CloseRequest) -> CloseThread:
    return CloseThread()


def _plan_signal(request: ControlSignalRequest, _thread_id: str, now: str, actor_type: str) -> PlannedWrite:
    run_id = rules.required_text(request.run_id, "forum control run_id")
    agent_name = rules.required_text(request.agent_name, "forum control agent_name")
    ticket = rules.required_text(request.ticket, "forum control ticket")
    payload = dict(request.payload)
    for key, value in (("run_id", run_id), ("agent_name", agent_name)):
        given = payload.get(key)
        if given in (None, ""):
            payload[key] = value
        elif isinstance(given, str) and given.strip() != value:
            raise ForumError(f"forum control payload {key} {given!r} does not match {key} {value!r}")
    clean = rules.validate_control_payload(payload)
    thread_id = ids.thread_id()  # used only if this signal opens the control thread
    envelope = _envelope(
        request, "control_signal", thread_id, now, actor_type, ticket=ticket, run_id=run_id, agent_name=agent_name
    )
    command = ControlSignal(control_type=clean["control_type"], payload=clean, post_id=ids.post_id())
    return PlannedWrite(thread_id, [CommandMessage(envelope=envelope, command=command)])


def _envelope(
    request: ActorFields,
    command: str,
    thread_id: str,
    now: str,
    actor_type: str,
    *,
    ticket: str = "",
    run_id: str = "",
    agent_name: str = "",
) -> Envelope:
    event_id = ids.event_id()
    return Envelope(
        event_id=event_id,
        event_type=registry.EVENT_TYPE_OF_COMMAND[command],
        occurred_at=now,
        thread_id=thread_id,
        run_id=run_id,
        ticket=ticket,
        agent_name=agent_name,
        actor_type=actor_type,
        actor_name=request.actor_name.strip(),
        correlation_id=request.correlation_id.strip() or event_id,
        causation_id=request.causation_id.strip(),
    )


# One planner per write request (registry.WRITES), checked on import.
PLANNERS: dict[type, Planner] = {
    OpenThreadRequest: _plan_open,
    AddPostRequest: _addressed(_add_post),
    AnswerRequest: _plan_answer,
    AssignRequest: _addressed(_assign),
    ChangeStateRequest: _addressed(_change_state),
    SetPriorityRequest: _addressed(_set_priority),
    CloseRequest: _addressed(_close),
    ControlSignalRequest: _plan_signal,
}
registry.require_all("metawsm/forum/commands.py PLANNERS", PLANNERS, (w.request for w in registry.WRITES),
                     "write request")
