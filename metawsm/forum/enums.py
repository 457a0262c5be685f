"""Forum vocabularies.  Values are lower-case strings on the wire and in SQLite."""

from __future__ import annotations

import enum
from typing import TypeVar

from metawsm.forum.errors import ForumError


class ActorType(str, enum.Enum):
    AGENT = "agent"
    OPERATOR = "operator"
    HUMAN = "human"
    SYSTEM = "system"


class ThreadState(str, enum.Enum):
    NEW = "new"
    TRIAGED = "triaged"
    WAITING_OPERATOR = "waiting_operator"
    WAITING_HUMAN = "waiting_human"
    ANSWERED = "answered"
    CLOSED = "closed"


class Priority(str, enum.Enum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"


class ViewerType(str, enum.Enum):
    HUMAN = "human"
    AGENT = "agent"


class QueueType(str, enum.Enum):
    UNSEEN = "unseen"
    UNANSWERED = "unanswered"


class ControlType(str, enum.Enum):
    GUIDANCE_REQUEST = "guidance_request"
    GUIDANCE_ANSWER = "guidance_answer"
    COMPLETION = "completion"
    VALIDATION = "validation"


class OutboxStatus(str, enum.Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    SENT = "sent"
    FAILED = "failed"
    PARKED = "parked"


E = TypeVar("E", bound=enum.Enum)


def allowed_values(enum_type: type[enum.Enum]) -> str:
    return ", ".join(member.value for member in enum_type)


def parse_enum(enum_type: type[E], value: str, field: str) -> E:
    """Parse a wire value; the error names the field and every allowed value."""
    try:
        return enum_type(value)
    except ValueError:
        raise ForumError(
            f'invalid {field} "{value}": must be one of {allowed_values(enum_type)}', code="invalid_value"
        ) from None
