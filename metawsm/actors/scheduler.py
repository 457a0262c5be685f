"""One timer thread for the whole actor system (backoff restarts and safety sweeps).

``threading.Timer`` would cost a thread per delay; sweeps fire every second for every
supervisor and pipeline actor, so a single heap-driven thread is cheaper and easier to stop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, name: str = "metawsm-scheduler") -> None:
        self._heap: list[tuple[float, int, Callable[[], object]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._counter), callback))
            self._cond.notify()

    def every(self, interval: float, callback: Callable[[], bool | None]) -> None:
        """Call ``callback`` every ``interval`` seconds until it returns ``False``."""

        def tick() -> None:
            if callback() is not False:
                self.call_later(interval, tick)

        self.call_later(interval, tick)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = None if not self._heap else self._heap[0][0] - time.monotonic()
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a scheduled tell to a dead actor must not kill the timer thread
                log.debug("scheduled callback failed", exc_info=True)
