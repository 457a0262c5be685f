"""The inspection shape of one actor (``ActorNode`` of the HTTP API)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import msgspec

from metawsm.actors.messages import FailureInfo

ActorState = Literal["starting", "running", "restarting", "stopped", "failed"]


class ActorNode(msgspec.Struct, kw_only=True):
    name: str
    path: str
    kind: str
    state: ActorState
    urn: str = ""
    started_at: str | None = None
    restarts: int = 0
    last_failure: FailureInfo | None = None
    processed: int = 0
    mailbox: int = 0
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    children: list[ActorNode] = msgspec.field(default_factory=list)

    def find(self, path: str) -> ActorNode | None:
        if self.path == path:
            return self
        for child in self.children:
            found = child.find(path)
            if found is not None:
                return found
        return None

    def walk(self) -> Iterator[ActorNode]:
        yield self
        for child in self.children:
            yield from child.walk()
