"""Name → current actor reference, so callers never hold a ref that a restart replaced."""

from __future__ import annotations

import threading
from typing import Any

import pykka

from metawsm.actors.errors import ActorUnavailable


class Directory:
    """Thread-safe map from an actor path (``root/forum/intake``) to its live ``ActorRef``.

    Supervisors bind a child when they start it and unbind it when it exits; a crashing
    actor unbinds itself at once, so an ask arriving during the restart fails fast instead
    of queueing on a dead mailbox.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._states: dict[str, str] = {}

    def bind(self, path: str, ref: pykka.ActorRef[Any]) -> None:
        with self._lock:
            self._refs[path] = ref
            self._states[path] = "running"

    def unbind(self, path: str, ref: pykka.ActorRef[Any] | None = None, state: str = "restarting") -> None:
        """Forget ``path``; with ``ref`` given, only if it is still the bound one."""
        with self._lock:
            current = self._refs.get(path)
            if ref is not None and current is not None and current is not ref:
                return
            self._refs.pop(path, None)
            self._states[path] = state

    def lookup(self, path: str) -> pykka.ActorRef[Any]:
        with self._lock:
            ref = self._refs.get(path)
            state = self._states.get(path, "not running")
        if ref is None or not ref.is_alive():
            raise ActorUnavailable(path, "restarting" if state == "running" else state)
        return ref

    def get(self, path: str) -> pykka.ActorRef[Any] | None:
        with self._lock:
            return self._refs.get(path)

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._refs)
