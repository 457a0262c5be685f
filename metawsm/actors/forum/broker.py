"""EventBroker: hands committed events and verdicts to the sinks outside the pipeline.

Sinks (the HTTP layer's waiters and WebSocket hub, the run supervisor) are registered in
``services.sinks`` rather than in this actor, so a broker restart loses no subscriber.
Sinks must not block: they hop to their own thread or loop.

What a restart does lose is the broker's mailbox (and the tells sent while it was down):
announcements are fire-and-forget.  So on start, and as a safety sweep (a second after
anything passed through or while a caller waits, backing off to ``RESYNC_IDLE_MAX_SECONDS``
at rest), the broker lets each sink that has a ``resync(conn)`` method catch up from SQLite (the
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
from metawsm.actors.scheduler import PacedTick

log = logging.getLogger("metawsm.forum")

RESYNC_SECONDS = 1.0
# While nothing reaches the broker and no caller waits, its sweep backs off (doubling) up to this.
RESYNC_IDLE_MAX_SECONDS = 8.0


class _Resync(msgspec.Struct, frozen=True):
    """The broker's own safety sweep: sinks with ``resync(conn)`` catch up from SQLite;
    ``token``: ticks of a superseded timer are ignored."""

    token: int = 0


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
        self._handed = 0  # Applied and CommandsDecided handed to sinks since the last sweep
        self._resync = PacedTick(RESYNC_SECONDS, RESYNC_IDLE_MAX_SECONDS,
                                 lambda delay, token: self.tell_self_later(delay, _Resync(token)))
        self._resync.start(0.0)  # at once: catch up on what a previous incarnation missed

    def teardown(self) -> None:
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {"sinks": len(self.sinks.all()), "events_total": self.events_total, "last_sequence": self.last_sequence}

    def handle(self, message: Any) -> Any:
        match message:
            case Applied(projection=projection, events=events):
                self._handed += 1
                if projection == "thread_views" and events:
                    self.events_total += len(events)
                    self.last_sequence = events[-1].sequence
                for sink in self._quick_first(self.sinks.all()):
                    self._safely(sink.events_applied, projection, events)
            case CommandsDecided(outcomes=outcomes):
                self._handed += 1
                for sink in self.sinks.all():
                    self._safely(sink.commands_decided, outcomes)
            case _Resync(token=token):
                if not self._resync.current(token):
                    return None
                waiting = 0
                for sink in self.sinks.all():
                    resync = getattr(sink, "resync", None)
                    if resync is not None:
                        self._safely(resync, self.conn)
                        waiting += self._waiting(sink)
                handed, self._handed = self._handed, 0
                self._resync.done(active=bool(handed or waiting))
            case _:
                return super().handle(message)
        return None

    @staticmethod
    def _waiting(sink: Any) -> int:
        """Callers a sink still holds (``waiting()``, when it has one): the sweep keeps its fast pace."""
        waiting = getattr(sink, "waiting", None)
        try:
            return int(waiting()) if waiting is not None else 0
        except Exception:  # noqa: BLE001 - a sink that cannot say is treated as waiting
            return 1

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
