"""DecisionFeed: announces each stored decision to listeners on other threads.

The operator actor publishes a decision once it is committed to ``operator_decisions``; the
WebSocket hub turns it into an ``operator.decision`` frame and the long-poll route wakes its
waiters.  Listeners are called on the publisher's thread and must not block (they hop to
their own loop), like the pipeline's event sinks.  The table is the truth: a listener that
missed an announcement reads what it missed from SQLite.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from metawsm.operator.model import Decision

log = logging.getLogger("metawsm.operator")

DecisionListener = Callable[[Decision], None]


class DecisionFeed:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: tuple[DecisionListener, ...] = ()

    def add(self, listener: DecisionListener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove(self, listener: DecisionListener) -> None:
        with self._lock:
            self._listeners = tuple(item for item in self._listeners if item is not listener)

    def publish(self, decision: Decision) -> None:
        for listener in self._listeners:
            try:
                listener(decision)
            except Exception:  # one broken listener must not silence the others
                log.exception("operator: a decision listener failed")
