"""One timer thread for the whole actor system (backoff restarts and safety sweeps).

``threading.Timer`` would cost a thread per delay; a single heap-driven thread that sleeps
until the next deadline is cheaper and easier to stop.  At rest nothing should wake up that
has nothing to do: a safety sweep that keeps finding nothing slows down (:class:`IdleBackoff`,
:class:`PacedTick`) and speeds up again as soon as it finds work or is poked.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

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
            entry = (time.monotonic() + max(0.0, delay), next(self._counter), callback)
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                # Only an earlier deadline changes how long the timer thread sleeps: a later
                # one (a sweep re-arming itself, say) need not wake it.
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


class IdleBackoff:
    """The delay before the next run of a periodic job: ``base`` after a run that found work,
    doubling after each run that found nothing, up to ``ceiling``."""

    def __init__(self, base: float, ceiling: float) -> None:
        if base <= 0 or ceiling < base:
            raise ValueError(f"need 0 < base <= ceiling, got {base}, {ceiling}")
        self.base = base
        self.ceiling = ceiling
        self.current = base

    def next(self, active: bool) -> float:
        self.current = self.base if active else min(self.current * 2, self.ceiling)
        return self.current

    def reset(self) -> None:
        self.current = self.base


class PacedTick:
    """One periodic job of an actor, paced by an :class:`IdleBackoff`.

    ``arm(delay, token)`` schedules one tick carrying ``token`` (typically
    ``tell_self_later(delay, _Sweep(token))``); the actor runs the job only for the
    :meth:`current` token, then calls :meth:`done` with whether the run found work, which arms
    the next tick.  :meth:`poke` (something happened) brings a far tick back within ``base``:
    it arms a new token, so the one already scheduled is ignored when it comes.  Used on the
    actor's own thread only.
    """

    def __init__(self, base: float, ceiling: float, arm: Callable[[float, int], Any]) -> None:
        self.backoff = IdleBackoff(base, ceiling)
        self._arm = arm
        self.token = 0
        self.due_at = float("inf")

    def start(self, delay: float | None = None) -> None:
        self._schedule(self.backoff.base if delay is None else delay)

    def current(self, token: int) -> bool:
        return token == self.token

    def done(self, active: bool) -> float:
        delay = self.backoff.next(active)
        self._schedule(delay)
        return delay

    def poke(self) -> None:
        self.backoff.reset()
        if self.due_at - time.monotonic() > self.backoff.base:
            self._schedule(self.backoff.base)

    @property
    def interval(self) -> float:
        return self.backoff.current

    def _schedule(self, delay: float) -> None:
        self.token += 1
        self.due_at = time.monotonic() + delay
        self._arm(delay, self.token)
