"""Counters one managed actor keeps for inspection; read from any thread without asking it.

Inspection must answer even when an actor is busy or stuck, so it never goes through a
mailbox: the actor writes plain attributes (atomic under the GIL) and readers copy them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from metawsm.actors.messages import FailureInfo


class ActorStats:
    """Survives restarts: one per child slot, handed to each new incarnation."""

    def __init__(self) -> None:
        self.state: str = "starting"
        self.urn: str = ""
        self.started_at: str | None = None
        self.restarts: int = 0
        self.last_failure: FailureInfo | None = None
        self.processed: int = 0
        self.mailbox_depth: Callable[[], int] = lambda: 0
        self.describe: Callable[[], dict[str, Any]] = dict
        self.children: Callable[[], list[Any]] = list
        # Thread of the current incarnation: while it lives, an exit report may still come.
        self.thread: threading.Thread | None = None

    def details(self) -> dict[str, Any]:
        try:
            return dict(self.describe())
        except Exception as exc:  # noqa: BLE001 - a describe() bug must not break the whole tree
            return {"describe_error": repr(exc)}
