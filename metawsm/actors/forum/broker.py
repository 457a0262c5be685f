"""EventBroker: hands committed events and verdicts to the sinks outside the pipeline.

Sinks (the HTTP layer's waiters and WebSocket hub, the run supervisor) are registered in
``services.sinks`` rather than in this actor, so a broker restart loses no subscriber.
Sinks must not block: they hop to their own thread or loop.

What a restart does lose is the broker's mailbox (and the tells sent while it was down):
announcements are fire-and-forget.  So on start, and every second as a safety sweep, the
broker lets each sink that has a ``resync(conn)`` method catch up from SQLite (the
OutcomeBoard settles callers whose event or verdict it never heard of; the WebSocket hub has
its own fill-from-checkpoint loop).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, ClassVar

import msgspec

from metawsm.actors.forum.messages import Applied, CommandsDecided
from metawsm.actors.managed import ManagedActor

log = logging.getLogger("metawsm.forum")

RESYNC_SECONDS = 1.0


class _Resync(msgspec.Struct, frozen=True):
    """The broker's own safety sweep: sinks with ``resync(conn)`` catch up from SQLite."""


# All tells: Applied (from the announcing projections), CommandsDecided (from the handler) and
# _Resync, the broker's own sweep.
BrokerMessage = Applied | CommandsDecided | _Resync


class EventBroker(ManagedActor):
    kind: ClassVar[str] = "broker"

    def setup(self) -> None:
        self.sinks = self.system.services.sinks
        self.conn: sqlite3.Connection = self.system.services.db.connect()
        self.events_total = 0
        self.last_sequence = 0
        self.tell_self_every(RESYNC_SECONDS, _Resync())
        self.tell_self(_Resync())

    def teardown(self) -> None:
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"sinks": len(self.sinks.all()), "events_total": self.events_total, "last_sequence": self.last_sequence}

    def handle(self, message: Any) -> Any:
        match message:
            case Applied(projection=projection, events=events):
                if projection == "thread_views" and events:
                    self.events_total += len(events)
                    self.last_sequence = events[-1].sequence
                for sink in self._quick_first(self.sinks.all()):
                    self._safely(sink.events_applied, projection, events)
            case CommandsDecided(outcomes=outcomes):
                for sink in self.sinks.all():
                    self._safely(sink.commands_decided, outcomes)
            case _Resync():
                for sink in self.sinks.all():
                    resync = getattr(sink, "resync", None)
                    if resync is not None:
                        self._safely(resync, self.conn)
            case _:
                return super().handle(message)
        return None

    @staticmethod
    def _quick_first(sinks: tuple[Any, ...]) -> list[Any]:
        """Sinks that only hand over (the WebSocket hub) before those that read SQLite on this
        thread (``reads_on_broker = True``: the OutcomeBoard reads the waiting callers' views)."""
        return sorted(sinks, key=lambda sink: bool(getattr(sink, "reads_on_broker", False)))

    @staticmethod
    def _safely(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("event sink failed")
