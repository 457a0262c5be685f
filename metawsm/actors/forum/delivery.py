"""``DeliveryTracker``: the stream consumer's delivery bookkeeping, with no threads and no I/O.

The :class:`~metawsm.actors.forum.consumer.StreamConsumer` reads Redis, talks to the
workers, parks in SQLite and acks; every decision about *what* to do with an entry is made
here, so it can be tested without Redis, actors or time passing.  The invariants:

* **In flight.**  An entry read from a stream is in flight, keyed ``<stream>/<entry id>``,
  until every worker it is routed to has it: a command goes to the handler, an event to every
  projection, one after another (``thread_views`` first), each as soon as the one before has
  it.  An entry already in flight is not admitted again (a reclaim, a reconcile).
* **One Deliver per worker.**  While a worker has an unanswered Deliver (sent less than
  ``busy_stale`` seconds ago), entries for it queue here, in order, and go out together when
  it reports, at most ``max_deliver`` per Deliver.
* **Retry or count.**  A worker that was unavailable, or an error starting with ``retry:``,
  means "again shortly" (``RETRY_UNAVAILABLE_SECONDS``, or the report's ``retry_after`` when the
  worker asked for longer: a database that cannot be written) with no attempt counted.  Any other
  error counts an attempt for that worker and retries after a growing delay
  (``RETRY_FAILED_SECONDS`` doubling); at ``max_attempts`` the entry is parked (once, however
  many workers give up on it) and that worker is done with it.
* **Undecodable** entries are parked and acked at once: they can never succeed.
* **Acks** are batched: finished entries collect for one XACK, and the first of a batch asks
  the actor to ack soon (:attr:`Reported.ack_soon`, then :meth:`take_acks`).
* **Back-pressure**: the reader pauses at ``max_in_flight`` entries and resumes below half.
* **Linger** (``linger``, per worker): entries for an idle lingering worker are held for its
  delay and then go out together (:meth:`hold`, :meth:`release`), so at a low write rate a
  worker nobody waits for (``thread_stats``, ``queue_view``) gets one Deliver, one transaction
  and one report for several entries instead of one each.  A busy worker's entries queue as
  always and go out when it reports, without lingering.

Callers pass ``now`` (monotonic seconds) where time matters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import msgspec

from metawsm.actors.forum.messages import DeliveryDone, Entry
from metawsm.forum.messages import CommandMessage, EventMessage, decode_bus_message
from metawsm.transport.streams import InboundEntry

MAX_IN_FLIGHT = 5000
MAX_DELIVER = 1000  # entries per Deliver (one worker transaction)
BUSY_STALE_SECONDS = 10.0  # a worker that has not reported for this long gets the next batch anyway
RETRY_UNAVAILABLE_SECONDS = 0.02
RETRY_FAILED_SECONDS = 0.05


class Batch(NamedTuple):
    """One Deliver to send now to ``target``."""

    target: str
    keys: tuple[str, ...]
    entries: list[Entry]


class Retry(NamedTuple):
    """Deliver ``keys`` to ``target`` again after ``delay`` seconds (those still in flight then)."""

    delay: float
    target: str
    keys: tuple[str, ...]


class Parking(NamedTuple):
    """Park ``entry`` (record it with its error); ``ack``: ack it at once, nothing else will."""

    entry: InboundEntry
    error: str
    attempts: int
    ack: bool


class Admitted(NamedTuple):
    """What newly read entries ask for, in this order: parkings, then first deliveries."""

    parkings: list[Parking]
    sends: dict[str, list[str]]  # first worker -> keys


class Reported(NamedTuple):
    """What a worker's report asks for, in this order."""

    parkings: list[Parking]
    onward: list[tuple[str, list[str]]]  # the next worker of each chain -> keys
    retries: list[Retry]
    queued: list[str]  # keys that waited for the reporting worker: send them to it now
    ack_soon: bool  # the ack batch has just started: tell yourself to ack


class _InFlight:
    __slots__ = ("entry", "message", "remaining", "chain", "attempts", "parked")

    def __init__(self, entry: InboundEntry, message: CommandMessage | EventMessage, targets: Sequence[str]) -> None:
        self.entry = entry
        self.message = message
        self.remaining = set(targets)
        self.chain = list(targets[1:])  # workers that get the entry once the one before is done
        self.attempts: dict[str, int] = {}
        self.parked = False  # recorded once, however many targets gave up on it


class DeliveryTracker:
    def __init__(
        self,
        command_targets: Sequence[str],
        event_targets: Sequence[str],
        max_attempts: int,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_deliver: int = MAX_DELIVER,
        busy_stale: float = BUSY_STALE_SECONDS,
        linger: Mapping[str, float] | None = None,
    ) -> None:
        self.command_targets = list(command_targets)
        self.event_targets = list(event_targets)
        self.max_attempts = max_attempts
        self.max_in_flight = max_in_flight
        self.max_deliver = max_deliver
        self.busy_stale = busy_stale
        self._in_flight: dict[str, _InFlight] = {}
        self._busy: dict[str, float] = {}  # worker -> when its outstanding Deliver was sent
        self._queued: dict[str, dict[str, None]] = {}  # worker -> keys waiting for it (ordered set)
        self._to_ack: list[InboundEntry] = []
        self.linger = dict(linger or {})
        self._holding: set[str] = set()  # lingering workers whose entries are held until release()

    def __len__(self) -> int:
        """Entries in flight."""
        return len(self._in_flight)

    def admit(self, entries: Iterable[InboundEntry]) -> Admitted:
        """Take newly read (or reclaimed) entries in flight; entries already in flight are skipped."""
        parkings: list[Parking] = []
        sends: dict[str, list[str]] = {}
        for entry in entries:
            key = f"{entry.stream}/{entry.entry_id}"
            if key in self._in_flight:
                continue
            try:
                message = decode_bus_message(entry.payload)
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                parkings.append(Parking(entry, f"undecodable entry: {error}", 1, ack=True))
                continue
            match message:
                case CommandMessage():
                    targets = self.command_targets
                case EventMessage():
                    targets = self.event_targets
                case _:  # pragma: no cover - the union has two members
                    continue
            self._in_flight[key] = _InFlight(entry, message, targets)
            sends.setdefault(targets[0], []).append(key)
        return Admitted(parkings, sends)

    def hold(self, target: str, keys: list[str], now: float) -> float | None:
        """Hold ``keys`` for a lingering, idle ``target``.

        None: not held (no linger for it, nothing to hold, or a Deliver is outstanding, so
        :meth:`batch` queues them); 0.0: held, behind a release already due; a delay: held,
        call :meth:`release` after it.
        """
        delay = self.linger.get(target)
        if delay is None or not keys:
            return None
        sent_at = self._busy.get(target)
        if sent_at is not None and now - sent_at < self.busy_stale:
            return None
        self._queued.setdefault(target, {}).update(dict.fromkeys(keys))
        if target in self._holding:
            return 0.0
        self._holding.add(target)
        return delay

    def release(self, target: str) -> list[str]:
        """The held keys of ``target`` still waiting for it, to send now with :meth:`batch`."""
        self._holding.discard(target)
        if target in self._busy:
            return []  # a Deliver went out meanwhile (a report released the queue): its report sends the rest
        queued = self._queued.pop(target, None) or {}
        return [k for k in queued if k in self._in_flight and target in self._in_flight[k].remaining]

    def batch(self, target: str, keys: list[str], now: float) -> Batch | None:
        """The Deliver to send ``target`` now, or None: nothing to send, or queued behind the
        worker's outstanding Deliver (beyond ``max_deliver``, the rest queues too)."""
        if not keys:
            return None
        sent_at = self._busy.get(target)
        if sent_at is not None and now - sent_at < self.busy_stale:
            self._queued.setdefault(target, {}).update(dict.fromkeys(keys))
            return None
        if len(keys) > self.max_deliver:
            self._queued.setdefault(target, {}).update(dict.fromkeys(keys[self.max_deliver:]))
            keys = keys[:self.max_deliver]
        self._busy[target] = now
        in_flight = self._in_flight
        entries = [Entry(key=k, message=in_flight[k].message, message_id=in_flight[k].entry.message_id) for k in keys]
        return Batch(target, tuple(keys), entries)

    def undeliverable(self, batch: Batch) -> Retry:
        """The Deliver could not even be told (no worker at the path): try again shortly."""
        self._busy.pop(batch.target, None)
        return Retry(RETRY_UNAVAILABLE_SECONDS, batch.target, batch.keys)

    def in_flight(self, keys: Iterable[str]) -> list[str]:
        """The keys still in flight (a retry's keys, when its time comes)."""
        return [k for k in keys if k in self._in_flight]

    def report(self, done: DeliveryDone) -> Reported:
        """A worker reported on its Deliver: move each entry on, retry, park or finish it."""
        target = done.target
        self._busy.pop(target, None)
        parkings: list[Parking] = []
        onward: dict[str, list[str]] = {}
        retry_now: list[str] = []
        retry_later: dict[float, list[str]] = {}
        finished: list[InboundEntry] = []
        for key in done.keys:
            record = self._in_flight.get(key)
            if record is None or target not in record.remaining:
                continue
            error = done.failed.get(key)
            if error is None:
                record.remaining.discard(target)
            elif done.retry_only or error.startswith("retry:"):
                retry_now.append(key)
                continue
            else:
                attempts = record.attempts.get(target, 0) + 1
                record.attempts[target] = attempts
                if attempts < self.max_attempts:
                    retry_later.setdefault(RETRY_FAILED_SECONDS * (2 ** (attempts - 1)), []).append(key)
                    continue
                if not record.parked:
                    record.parked = True
                    parkings.append(Parking(record.entry, f"{target}: {error}", attempts, ack=False))
                record.remaining.discard(target)
            if record.chain:
                onward.setdefault(record.chain.pop(0), []).append(key)
            elif not record.remaining:
                finished.append(record.entry)
                del self._in_flight[key]
        delay = max(RETRY_UNAVAILABLE_SECONDS, done.retry_after)
        retries = [Retry(delay, target, tuple(retry_now))] if retry_now else []
        retries.extend(Retry(delay, target, tuple(keys)) for delay, keys in retry_later.items())
        queued = self._queued.pop(target, None) or {}
        waiting = [k for k in queued if k in self._in_flight and target in self._in_flight[k].remaining]
        ack_soon = bool(finished) and not self._to_ack
        self._to_ack.extend(finished)
        return Reported(parkings, list(onward.items()), retries, waiting, ack_soon)

    def take_acks(self) -> list[InboundEntry]:
        """The finished entries to XACK now (the batch starts again empty)."""
        entries, self._to_ack = self._to_ack, []
        return entries

    def reader_room(self) -> bool | None:
        """True: let the reader read; False: pause it; None: leave it as it is (hysteresis)."""
        count = len(self._in_flight)
        if count >= self.max_in_flight:
            return False
        if count < self.max_in_flight // 2:
            return True
        return None
