"""EventBroker: hands committed events and verdicts to the sinks outside the pipeline.

Sinks (the HTTP layer's waiters and WebSocket hub, the run supervisor) are registered in
``services.sinks`` rather than in this actor, so a broker restart loses no subscriber.
Sinks must not block: they hop to their own thread or loop.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from metawsm.actors.forum.messages import Applied, CommandsDecided
from metawsm.actors.managed import ManagedActor

log = logging.getLogger("metawsm.forum")


class EventBroker(ManagedActor):
    kind: ClassVar[str] = "broker"

    def setup(self) -> None:
        self.sinks = self.system.services.sinks
        self.events_total = 0
        self.last_sequence = 0

    def describe(self) -> dict[str, Any]:
        return {"sinks": len(self.sinks.all()), "events_total": self.events_total, "last_sequence": self.last_sequence}

    def handle(self, message: Any) -> Any:
        if isinstance(message, Applied):
            if message.projection == "thread_views" and message.events:
                self.events_total += len(message.events)
                self.last_sequence = message.events[-1].sequence
            for sink in self.sinks.all():
                self._safely(sink.events_applied, message.projection, message.events)
        elif isinstance(message, CommandsDecided):
            for sink in self.sinks.all():
                self._safely(sink.commands_decided, message.outcomes)
        else:
            return super().handle(message)
        return None

    @staticmethod
    def _safely(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - one broken sink must not starve the others
            log.exception("event sink failed")
