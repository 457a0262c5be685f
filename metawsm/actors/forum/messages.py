"""Messages between the forum pipeline actors (all frozen msgspec Structs)."""

from __future__ import annotations

from typing import Any

import msgspec

from metawsm.forum.messages import CommandMessage, EventMessage
from metawsm.forum.write_model import CommandOutcome
from metawsm.idempotency_keys import KeyClaim

# Paths of the pipeline actors, so callers address them by name, never by ref.
FORUM = "root/forum"
INTAKE = "root/forum/intake"
RELAY = "root/forum/relay"
CONSUMER = "root/forum/consumer"
HANDLER = "root/forum/handler"
PROJECTIONS = "root/forum/projections"
BROKER = "root/forum/broker"


def projection_path(name: str) -> str:
    return f"{PROJECTIONS}/{name}"


class Submit(msgspec.Struct, frozen=True):
    """Ask the intake to accept one write request (an API request Struct).

    ``idempotency``: the request's key, recorded in the transaction that accepts the write; a
    Submit whose key is already recorded writes nothing and is answered with the recorded write.
    """

    request: Any
    thread_id: str = ""
    default_actor_type: str = "human"
    idempotency: KeyClaim | None = None


class Accepted(msgspec.Struct, frozen=True, kw_only=True):
    """The intake's answer: the command is durable in the outbox."""

    thread_id: str
    event_id: str  # the event to wait for (the last one of the write)
    event_ids: list[str]
    already_applied: bool = False  # idempotent retry of an open_thread (nothing to wait for)


class WorkAvailable(msgspec.Struct, frozen=True):
    """Outbox rows were committed: the relay should publish."""


class Flush(msgspec.Struct, frozen=True):
    """The relay's own "publish now" (coalesces many WorkAvailable into one pass).

    ``force`` skips the remaining backoff: the consumer saw Redis answer again.
    """

    force: bool = False


class Reconcile(msgspec.Struct, frozen=True):
    """Republish what Redis may have lost (on start and after Redis came back empty)."""

    reason: str = ""


class Poll(msgspec.Struct, frozen=True):
    """The consumer's own "read the streams again"."""


class Entry(msgspec.Struct, frozen=True):
    """One stream entry handed to a worker; ``key`` identifies it in the consumer.

    ``message_id`` is the entry's outbox message id (empty for foreign entries): the
    command handler uses it to find the command's place in the intake order.
    """

    key: str
    message: Any  # CommandMessage | EventMessage
    message_id: str = ""


class Deliver(msgspec.Struct, frozen=True):
    entries: list[Entry]


class DeliveryReport(msgspec.Struct, frozen=True):
    """Per-entry result of a Deliver: keys that failed with their error text.

    ``retry_after`` > 0: the worker could not try (the database cannot be written); the failed
    keys are delivered again after that many seconds, without counting an attempt.
    """

    failed: dict[str, str] = msgspec.field(default_factory=dict)
    retry_after: float = 0.0


class DeliveryDone(msgspec.Struct, frozen=True):
    """Sent to the consumer (on the worker's thread) when a Deliver finished or failed."""

    target: str
    keys: tuple[str, ...]
    failed: dict[str, str]
    retry_only: bool = False  # the worker was unavailable: retry without counting an attempt
    retry_after: float = 0.0  # the worker asked to wait this long first (DeliveryReport.retry_after)


class ReplayParked(msgspec.Struct, frozen=True):
    message_id: str


class Applied(msgspec.Struct, frozen=True):
    """A projection committed these events (in sequence order)."""

    projection: str
    events: list[EventMessage]


class CommandsDecided(msgspec.Struct, frozen=True):
    """The handler's verdicts that produced no event (rejected or unchanged)."""

    outcomes: list[CommandOutcome]


class Rebuild(msgspec.Struct, frozen=True):
    """Clear a projection and replay the whole event log into it."""


class RebuildResult(msgspec.Struct, frozen=True):
    projection: str
    events_replayed: int
    last_sequence: int
    duration_ms: float


__all__ = [
    "Accepted",
    "Applied",
    "CommandMessage",
    "CommandsDecided",
    "Deliver",
    "DeliveryDone",
    "DeliveryReport",
    "Entry",
    "EventMessage",
    "Flush",
    "Poll",
    "Rebuild",
    "RebuildResult",
    "Reconcile",
    "ReplayParked",
    "Submit",
    "WorkAvailable",
]
