"""Write requests as the HTTP API accepts them (decoded strictly: unknown fields are errors).

Enum-valued fields are plain strings with an ``enum`` hint for the OpenAPI document, so a
bad value is refused by the forum rules with a message listing the allowed values.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from metawsm.forum.enums import ActorType, Priority, ThreadState, ViewerType


def _enum(enum_type: Any, description: str) -> Any:
    return msgspec.Meta(description=description, extra_json_schema={"enum": [m.value for m in enum_type]})


ActorTypeText = Annotated[str, _enum(ActorType, "Who acts: agent, operator, human or system.")]
PriorityText = Annotated[str, _enum(Priority, "Thread priority.")]
StateText = Annotated[str, _enum(ThreadState, "Thread state.")]
ViewerTypeText = Annotated[str, _enum(ViewerType, "Kind of viewer for seen markers and queues.")]


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class ActorFields(_Request, kw_only=True):
    actor_type: ActorTypeText | None = None
    actor_name: str = ""
    correlation_id: str = ""
    causation_id: str = ""


class OpenThreadRequest(ActorFields, kw_only=True):
    thread_id: str = ""
    ticket: str
    run_id: str = ""
    agent_name: str = ""
    title: str
    body: str
    priority: PriorityText | None = None


class AddPostRequest(ActorFields, kw_only=True):
    body: str


class AnswerRequest(ActorFields, kw_only=True):
    body: str


class AssignRequest(ActorFields, kw_only=True):
    assignee_type: ActorTypeText
    assignee_name: str
    assignment_note: str = ""


class ChangeStateRequest(ActorFields, kw_only=True):
    to_state: StateText


class SetPriorityRequest(ActorFields, kw_only=True):
    priority: PriorityText


class CloseRequest(ActorFields, kw_only=True):
    pass


class ControlSignalRequest(ActorFields, kw_only=True):
    run_id: str
    ticket: str
    agent_name: str
    payload: dict[str, Any]


class SeenRequest(_Request, kw_only=True):
    viewer_type: ViewerTypeText
    viewer_id: str
    last_seen_event_sequence: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None


class RebuildRequest(_Request, kw_only=True):
    projection: str = ""


WriteRequest = (
    OpenThreadRequest
    | AddPostRequest
    | AnswerRequest
    | AssignRequest
    | ChangeStateRequest
    | SetPriorityRequest
    | CloseRequest
    | ControlSignalRequest
)
