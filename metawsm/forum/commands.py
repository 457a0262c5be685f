"""Turn API write requests into validated, id-stamped command messages.

This is the intake's pure half: it validates input that does not depend on state (required
text, enum values, control payloads) and assigns ``thread_id``/``event_id``/``post_id`` and
correlation ids.  The checks against current state live in :mod:`metawsm.forum.write_model`.
"""

from __future__ import annotations

import re

import msgspec

from metawsm import ids
from metawsm.clock import now_text
from metawsm.forum import rules
from metawsm.forum.enums import ActorType, parse_enum
from metawsm.forum.errors import ForumError, for_command
from metawsm.forum.messages import (
    EVENT_TYPE_OF_COMMAND,
    AddPost,
    AssignThread,
    ChangeState,
    CloseThread,
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

# request type → the command name whose error code it reports
COMMAND_OF_REQUEST: dict[type, str] = {
    OpenThreadRequest: "open_thread",
    AddPostRequest: "add_post",
    AnswerRequest: "answer",
    AssignRequest: "assign_thread",
    ChangeStateRequest: "change_state",
    SetPriorityRequest: "set_priority",
    CloseRequest: "close_thread",
    ControlSignalRequest: "control_signal",
}


class PlannedWrite(msgspec.Struct, frozen=True):
    """What the intake will enqueue for one request; the caller waits for ``wait_event_id``."""

    thread_id: str
    commands: list[CommandMessage]

    @property
    def wait_event_id(self) -> str:
        return self.commands[-1].envelope.event_id


def plan(request: WriteRequest, thread_id: str = "", default_actor_type: str = "human") -> PlannedWrite:
    """Validate ``request`` and build its command message(s); refusals carry the command's code."""
    name = COMMAND_OF_REQUEST[type(request)]
    try:
        return _plan(request, thread_id, default_actor_type)
    except ForumError as error:
        raise for_command(error, name) from None


def _plan(request: WriteRequest, thread_id: str, default_actor_type: str) -> PlannedWrite:
    now = now_text()
    actor_type = parse_enum(ActorType, request.actor_type or default_actor_type, "actor_type").value
    if isinstance(request, OpenThreadRequest):
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
    if isinstance(request, ControlSignalRequest):
        return _plan_signal(request, now, actor_type)

    target = thread_id.strip()
    if not target:
        raise ForumError("forum thread_id is required")
    if isinstance(request, AnswerRequest):
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
    if isinstance(request, AddPostRequest):
        command = AddPost(body=rules.required_text(request.body, "forum post body"), post_id=ids.post_id())
        name = "add_post"
    elif isinstance(request, AssignRequest):
        command = AssignThread(
            assignee_type=parse_enum(ActorType, request.assignee_type, "assignee_type").value,
            assignee_name=rules.required_text(request.assignee_name, "forum assignee_name"),
            assignment_note=request.assignment_note.strip(),
        )
        name = "assign_thread"
    elif isinstance(request, ChangeStateRequest):
        command = ChangeState(to_state=rules.thread_state(request.to_state))
        name = "change_state"
    elif isinstance(request, SetPriorityRequest):
        command = SetPriority(priority=rules.priority(request.priority))
        name = "set_priority"
    elif isinstance(request, CloseRequest):
        command = CloseThread()
        name = "close_thread"
    else:  # pragma: no cover - exhaustive over WriteRequest
        raise TypeError(type(request).__name__)
    envelope = _envelope(request, name, target, now, actor_type)
    return PlannedWrite(target, [CommandMessage(envelope=envelope, command=command)])


def _plan_signal(request: ControlSignalRequest, now: str, actor_type: str) -> PlannedWrite:
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
        event_type=EVENT_TYPE_OF_COMMAND[command],
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
