"""Decoded ``forum_events`` rows shared by the projection actors of one daemon."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metawsm.forum.messages import EventMessage

EVENT_CACHE_SIZE = 5000


class EventCache:
    """Decoded ``forum_events`` rows, shared by the projection actors of one daemon.

    The log is append-only and never rewritten, so an event read (and decoded) once by the
    first projection is what the next three would read again; they take it from here.
    Only rows read from the log go in, never a delivered payload.
    """

    def __init__(self, limit: int = EVENT_CACHE_SIZE) -> None:
        self._lock = threading.Lock()
        self._events: dict[int, EventMessage] = {}
        self._limit = limit

    def range(self, after: int, upto: int) -> list[EventMessage] | None:
        """Events ``after < sequence <= upto`` if all are cached, else None."""
        with self._lock:
            events = self._events
            try:
                return [events[sequence] for sequence in range(after + 1, upto + 1)]
            except KeyError:
                return None

    def event_ids(self, sequences: list[int]) -> dict[int, str]:
        """The event id logged at each of ``sequences`` that is cached."""
        with self._lock:
            events = self._events
            return {s: events[s].envelope.event_id for s in sequences if s in events}

    def add(self, batch: list[EventMessage]) -> None:
        with self._lock:
            for event in batch:
                self._events[event.sequence] = event
            while len(self._events) > self._limit:
                del self._events[next(iter(self._events))]
