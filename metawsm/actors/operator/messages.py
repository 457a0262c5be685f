"""News for the Operator actor (docs/operator.md): told, never asked, so no sender waits for it."""

from __future__ import annotations

from typing import Any

import msgspec

OPERATOR = "root/operator"


class ControlNews(msgspec.Struct, frozen=True):
    """Control signals of these runs were projected (guidance asked or answered)."""

    run_ids: list[str]


class RunNews(msgspec.Struct, frozen=True):
    """A run changed status."""

    run_id: str
    status: str


class AgentDecided(msgspec.Struct, frozen=True):
    """An agent actor claimed a decision (``auto_restart``, ``escalate_blocked``) in the table."""

    decision_id: int


def tell_operator(system: Any, message: ControlNews | RunNews | AgentDecided) -> None:
    """News for the operator; dropped quietly while it restarts (its timer and the table catch up)."""
    system.tell(OPERATOR, message)
