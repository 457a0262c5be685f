"""Messages the actor runtime itself exchanges (domain actors define their own Structs).

Convention (see docs/messages.md): every message is a frozen msgspec Struct; a mailbox that
accepts several kinds dispatches on the Struct type.  A request that wants an answer is
wrapped in :class:`Request`, which carries a reply handle; fire-and-forget messages are sent
bare with ``tell``.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class ReplyHandle(Protocol):
    """Where an actor delivers the answer to a :class:`Request` (thread-safe, call once)."""

    def resolve(self, value: Any) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class FailureInfo(msgspec.Struct, frozen=True):
    type: str
    message: str
    at: str


class Request(msgspec.Struct, frozen=True):
    """Envelope for an ask whose answer is delivered through ``reply`` (no blocking future)."""

    body: Any
    reply: Any  # ReplyHandle; typed as Any because msgspec cannot encode callables


class Crash(msgspec.Struct, frozen=True):
    """Fault injection: the receiving managed actor raises :class:`InjectedFault`."""

    reason: str = "injected fault"


class ChildExited(msgspec.Struct, frozen=True):
    """A child tells its supervisor it stopped; ``failure`` is None for a clean stop."""

    child_id: str
    generation: int
    failure: FailureInfo | None = None


class RestartChildren(msgspec.Struct, frozen=True):
    """Scheduled by a supervisor to itself when a backoff delay has elapsed."""

    child_ids: tuple[str, ...]
    token: int


class SweepChildren(msgspec.Struct, frozen=True):
    """Periodic safety check for children that died without reporting."""


class StartChild(msgspec.Struct, frozen=True):
    """Add a child at run time (e.g. a Run actor under the RunSupervisor)."""

    spec: Any  # ChildSpec


class StopChild(msgspec.Struct, frozen=True):
    """Stop a child and forget its spec."""

    child_id: str


class Ping(msgspec.Struct, frozen=True):
    """Any managed actor answers ``"pong"``; used for liveness probes and benchmarks."""
