"""Write requests as the HTTP API accepts them (decoded strictly: unknown fields are errors).

Enum-valued fields are plain strings with an ``enum`` hint for the OpenAPI document, so a
bad value (the empty string included) is refused by the forum rules with a message listing the
allowed values.  Ids, names and titles are :data:`~metawsm.text.Line` s and bodies
:data:`~metawsm.text.Text` s: the decoder refuses control characters in them.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from metawsm.forum.enums import ActorType, Priority, ThreadState, ViewerType
from metawsm.text import Line, Text


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
    actor_name: Line = ""
    correlation_id: Line = ""
    causation_id: Line = ""


class OpenThreadRequest(ActorFields, kw_only=True):
    thread_id: Line = ""
    ticket: Line
    run_id: Line = ""
    agent_name: Line = ""
    title: Line
    body: Text
    priority: PriorityText | None = None


class AddPostRequest(ActorFields, kw_only=True):
    body: Text


class AnswerRequest(ActorFields, kw_only=True):
    body: Text


class AssignRequest(ActorFields, kw_only=True):
    assignee_type: ActorTypeText
    assignee_name: Line
    assignment_note: Text = ""


class ChangeStateRequest(ActorFields, kw_only=True):
    to_state: StateText


class SetPriorityRequest(ActorFields, kw_only=True):
    priority: PriorityText


class CloseRequest(ActorFields, kw_only=True):
    pass


class ControlSignalRequest(ActorFields, kw_only=True):
    run_id: Line
    ticket: Line
    agent_name: Line
    payload: dict[str, Any]  # checked field by field by the forum rules (rules.validate_control_payload)


class SeenRequest(_Request, kw_only=True):
    viewer_type: ViewerTypeText
    viewer_id: Line
    last_seen_event_sequence: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None


class RebuildRequest(_Request, kw_only=True):
    projection: Line = ""


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
