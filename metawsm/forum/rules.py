"""Forum rules, pure and shared by intake, the command handler and the CLI's local checks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from metawsm.forum.enums import ActorType, ControlType, Priority, ThreadState, parse_enum
from metawsm.forum.errors import ForumError
from metawsm.text import control_character

S = ThreadState
ALLOWED_TRANSITIONS: dict[ThreadState, frozenset[ThreadState]] = {
    S.NEW: frozenset({S.TRIAGED, S.WAITING_OPERATOR, S.WAITING_HUMAN, S.ANSWERED, S.CLOSED}),
    S.TRIAGED: frozenset({S.WAITING_OPERATOR, S.WAITING_HUMAN, S.ANSWERED, S.CLOSED}),
    S.WAITING_OPERATOR: frozenset({S.WAITING_HUMAN, S.ANSWERED, S.TRIAGED, S.CLOSED}),
    S.WAITING_HUMAN: frozenset({S.WAITING_OPERATOR, S.ANSWERED, S.TRIAGED, S.CLOSED}),
    S.ANSWERED: frozenset({S.WAITING_OPERATOR, S.WAITING_HUMAN, S.CLOSED}),
    S.CLOSED: frozenset(),
}


def transition_allowed(from_state: str, to_state: str) -> bool:
    if from_state == to_state:
        return True
    return ThreadState(to_state) in ALLOWED_TRANSITIONS[ThreadState(from_state)]


def allowed_targets(from_state: str) -> list[str]:
    """States reachable from ``from_state`` (excluding itself), in declaration order."""
    targets = ALLOWED_TRANSITIONS[ThreadState(from_state)]
    return [s.value for s in ThreadState if s in targets]


def check_transition(from_state: str, to_state: str) -> None:
    if not transition_allowed(from_state, to_state):
        raise ForumError(f"forum state transition {from_state} -> {to_state} is not allowed")


def closed_error(thread_id: str) -> ForumError:
    return ForumError(f"forum thread {thread_id} is closed")


def required_text(value: str | None, what: str) -> str:
    """Trim; refuse empty.  ``what`` reads like ``forum thread title``."""
    text = (value or "").strip()
    if not text:
        raise ForumError(f"{what} is required")
    return text


# An enum field left out (None) takes its default; one given must be an allowed value, and the
# empty string is not one: the document's enum does not list it, so neither do the rules.


def actor_type(value: str | None, default: str = "human") -> str:
    return parse_enum(ActorType, default if value is None else value, "actor_type").value


def priority(value: str | None) -> str:
    return parse_enum(Priority, "normal" if value is None else value, "priority").value


def thread_state(value: str) -> str:
    return parse_enum(ThreadState, value, "state").value


def content_hash(fields: Mapping[str, Any]) -> str:
    """Stable hash of what an open_thread asked for: the same id re-sent with it is a retry."""
    material = "\x1f".join(f"{key}={fields[key]}" for key in sorted(fields))
    return hashlib.sha256(material.encode()).hexdigest()


# -- control signals (schema version 1) -------------------------------------------------------

CONTROL_SCHEMA_VERSION = 1
CONTROL_FIELDS = ("question", "context", "answer", "summary", "status", "done_criteria")
_REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "guidance_request": ("question",),
    "guidance_answer": ("answer",),
    "completion": (),
    "validation": ("status", "done_criteria"),
}
_ALLOWED_KEYS = frozenset({"schema_version", "control_type", "run_id", "agent_name", *CONTROL_FIELDS})
_LINE_KEYS = frozenset({"run_id", "agent_name", "status"})


def validate_control_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Check a schema-v1 control payload; return it normalised (strings trimmed, empties dropped).

    The first problem found is reported, with the exact texts of the spec, e.g.
    ``forum control guidance_request requires question``.
    """
    if not isinstance(payload, Mapping):
        raise ForumError("forum control payload must be an object")
    unknown = sorted(set(payload) - _ALLOWED_KEYS)
    if unknown:
        raise ForumError(f'forum control payload has unknown field "{unknown[0]}"')
    version = payload.get("schema_version")
    if version != CONTROL_SCHEMA_VERSION or isinstance(version, bool):
        raise ForumError(f"forum control schema_version must be {CONTROL_SCHEMA_VERSION}")
    control_type = payload.get("control_type")
    if control_type not in _REQUIRED_BY_TYPE:
        raise ForumError(
            "forum control control_type must be " + "|".join(t.value for t in ControlType)
        )
    clean: dict[str, Any] = {"schema_version": CONTROL_SCHEMA_VERSION, "control_type": control_type}
    for key in ("run_id", "agent_name", *CONTROL_FIELDS):
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ForumError(f"forum control {key} must be a string")
        # The payload is free-form JSON, so msgspec cannot hold it to metawsm.text's rules: ids
        # are one line; questions, answers and summaries may hold newlines and tabs.
        bad = control_character(value, text=key not in _LINE_KEYS)
        if bad is not None:
            kind = "must be one line of printable text" if key in _LINE_KEYS else "may hold newlines and tabs only"
            raise ForumError(f"forum control {key} contains a control character ({bad}); it {kind}")
        if value.strip():
            clean[key] = value.strip()
    for key in ("run_id", "agent_name"):
        if key not in clean:
            raise ForumError(f"forum control {control_type} requires {key}")
    for key in _REQUIRED_BY_TYPE[control_type]:
        if key == "status" and key in clean:
            continue
        if key not in clean:
            if key == "status":
                raise ForumError("forum control validation status must be passed|failed")
            raise ForumError(f"forum control {control_type} requires {key}")
    if control_type == "validation" and clean["status"] not in ("passed", "failed"):
        raise ForumError("forum control validation status must be passed|failed")
    return clean


def control_thread_title(agent_name: str) -> str:
    return f"Control: {agent_name}"
