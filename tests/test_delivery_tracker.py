"""DeliveryTracker, the stream consumer's bookkeeping, on its own: no Redis, no actors, no threads.

Entries are real encoded bus messages; worker reports are the ``DeliveryDone`` messages the
consumer would receive; time is the ``now`` the test passes.  The consumer doing the I/O
these decisions ask for is tested through the real pipeline (``tests/test_pipeline_*.py``).
"""

from __future__ import annotations

import pytest

from metawsm.actors.forum.delivery import (
    RETRY_FAILED_SECONDS,
    RETRY_UNAVAILABLE_SECONDS,
    DeliveryTracker,
    Parking,
    Retry,
)
from metawsm.actors.forum.messages import DeliveryDone
from metawsm.forum.messages import AddPost, CommandMessage, Envelope, encode
from metawsm.transport.streams import InboundEntry
from support.forum_events import ForumEvents

HANDLER = "root/forum/handler"
VIEWS, STATS, QUEUE = "p/thread_views", "p/thread_stats", "p/queue_view"
PROJECTIONS = [VIEWS, STATS, QUEUE]


def tracker(max_attempts: int = 3, **options: float) -> DeliveryTracker:
    return DeliveryTracker([HANDLER], PROJECTIONS, max_attempts, **options)  # type: ignore[arg-type]  # keyword options of several types


def command_entry(n: int) -> InboundEntry:
    envelope = Envelope(event_id=f"fevt_c{n}", event_type="forum.post.added", occurred_at="2026-01-01T00:00:00Z",
                        thread_id="fthr_1", ticket="T-1", actor_type="agent")
    payload = encode(CommandMessage(envelope=envelope, command=AddPost(body="hi", post_id=f"fpst_{n}")))
    return InboundEntry("s.forum.commands.add_post", f"{n}-0", f"fmsg_c{n}", "forum.commands.add_post", "", payload)


def event_entry(n: int) -> InboundEntry:
    event = ForumEvents().open()
    return InboundEntry("s.forum.events", f"{n}-0", f"fmsg_e{n}", "forum.events", "", encode(event))


def key(entry: InboundEntry) -> str:
    return f"{entry.stream}/{entry.entry_id}"


def ok(target: str, *keys: str) -> DeliveryDone:
    return DeliveryDone(target=target, keys=tuple(keys), failed={})


def failed(target: str, error: str, *keys: str, retry_only: bool = False) -> DeliveryDone:
    return DeliveryDone(target=target, keys=tuple(keys), failed=dict.fromkeys(keys, error), retry_only=retry_only)


def test_a_command_goes_to_the_handler_and_is_acked_once_it_reports() -> None:
    t = tracker()
    entry = command_entry(1)
    admitted = t.admit([entry])
    assert admitted.parkings == [] and admitted.sends == {HANDLER: [key(entry)]}
    batch = t.batch(HANDLER, [key(entry)], now=0.0)
    assert batch is not None and batch.keys == (key(entry),)
    assert [(e.key, e.message_id, type(e.message)) for e in batch.entries] == [(key(entry), "fmsg_c1", CommandMessage)]
    assert len(t) == 1
    reported = t.report(ok(HANDLER, key(entry)))
    assert (reported.onward, reported.retries, reported.queued, reported.parkings) == ([], [], [], [])
    assert reported.ack_soon is True
    assert len(t) == 0
    assert t.take_acks() == [entry] and t.take_acks() == []


def test_an_event_visits_the_projections_one_after_another() -> None:
    t = tracker()
    entry = event_entry(1)
    assert t.admit([entry]).sends == {VIEWS: [key(entry)]}
    t.batch(VIEWS, [key(entry)], now=0.0)
    assert t.report(ok(VIEWS, key(entry))).onward == [(STATS, [key(entry)])]
    t.batch(STATS, [key(entry)], now=0.0)
    assert t.report(ok(STATS, key(entry))).onward == [(QUEUE, [key(entry)])]
    t.batch(QUEUE, [key(entry)], now=0.0)
    last = t.report(ok(QUEUE, key(entry)))
    assert last.onward == [] and last.ack_soon and len(t) == 0


def test_only_the_first_finished_entry_of_an_ack_batch_asks_for_an_ack() -> None:
    t = tracker()
    first, second = command_entry(1), command_entry(2)
    t.admit([first, second])
    t.batch(HANDLER, [key(first), key(second)], now=0.0)
    assert t.report(ok(HANDLER, key(first))).ack_soon is True
    assert t.report(ok(HANDLER, key(second))).ack_soon is False  # already owed an ack
    assert t.take_acks() == [first, second]


def test_an_entry_already_in_flight_is_not_admitted_again() -> None:
    t = tracker()
    entry = command_entry(1)
    t.admit([entry])
    assert t.admit([entry]).sends == {}
    assert len(t) == 1


def test_an_undecodable_entry_is_parked_and_acked_at_once() -> None:
    t = tracker()
    junk = InboundEntry("s.x", "1-0", "", "forum.commands.add_post", "", b"not a message")
    admitted = t.admit([junk])
    assert admitted.sends == {} and len(t) == 0
    [parking] = admitted.parkings
    assert (parking.entry, parking.attempts, parking.ack) == (junk, 1, True)
    assert parking.error.startswith("undecodable entry: ")


def test_a_busy_worker_gets_what_arrived_meanwhile_in_one_delivery_when_it_reports() -> None:
    t = tracker()
    a, b, c = command_entry(1), command_entry(2), command_entry(3)
    t.admit([a])
    assert t.batch(HANDLER, [key(a)], now=0.0) is not None
    t.admit([b, c])
    assert t.batch(HANDLER, [key(b)], now=1.0) is None  # queued behind the outstanding Deliver
    assert t.batch(HANDLER, [key(c)], now=2.0) is None
    assert t.report(ok(HANDLER, key(a))).queued == [key(b), key(c)]
    batch = t.batch(HANDLER, [key(b), key(c)], now=3.0)
    assert batch is not None and batch.keys == (key(b), key(c))


def test_a_worker_silent_for_too_long_gets_the_next_delivery_anyway() -> None:
    t = tracker(busy_stale=10.0)
    a, b = command_entry(1), command_entry(2)
    t.admit([a, b])
    t.batch(HANDLER, [key(a)], now=0.0)
    assert t.batch(HANDLER, [key(b)], now=9.9) is None
    assert t.batch(HANDLER, [key(b)], now=10.0) is not None


def test_a_delivery_holds_at_most_max_deliver_entries_and_the_rest_waits() -> None:
    t = tracker(max_deliver=2)
    entries = [command_entry(n) for n in range(5)]
    keys = t.admit(entries).sends[HANDLER]
    batch = t.batch(HANDLER, keys, now=0.0)
    assert batch is not None and batch.keys == tuple(keys[:2])
    assert t.report(ok(HANDLER, *keys[:2])).queued == keys[2:]


def test_queued_keys_no_longer_owed_to_the_worker_are_dropped() -> None:
    t = tracker()
    a, b = command_entry(1), command_entry(2)
    t.admit([a, b])
    t.batch(HANDLER, [key(a)], now=0.0)
    t.batch(HANDLER, [key(b)], now=0.0)  # queued
    reported = t.report(ok(HANDLER, key(a), key(b)))  # a late report covering both
    assert reported.queued == []


def test_a_retry_error_or_an_unavailable_worker_is_retried_shortly_without_counting() -> None:
    t = tracker(max_attempts=1)
    a, b = command_entry(1), command_entry(2)
    t.admit([a, b])
    t.batch(HANDLER, [key(a), key(b)], now=0.0)
    reported = t.report(failed(HANDLER, "retry: waiting for an earlier command", key(a)))
    assert reported.retries == [Retry(RETRY_UNAVAILABLE_SECONDS, HANDLER, (key(a),))]
    assert reported.parkings == [] and len(t) == 2
    reported = t.report(failed(HANDLER, "ActorUnavailable: restarting", key(a), key(b), retry_only=True))
    assert reported.retries == [Retry(RETRY_UNAVAILABLE_SECONDS, HANDLER, (key(a), key(b)))]
    assert reported.parkings == [] and len(t) == 2


def test_a_worker_that_cannot_write_asks_for_a_later_retry_and_nothing_is_ever_counted() -> None:
    t = tracker(max_attempts=1)  # one counted failure would park
    entry = command_entry(1)
    t.admit([entry])
    for _ in range(5):  # a full disk lasts: every retry is answered the same way
        t.batch(HANDLER, [key(entry)], now=0.0)
        done = DeliveryDone(target=HANDLER, keys=(key(entry),), failed={key(entry): "retry: disk full: /db"},
                            retry_after=0.5)
        reported = t.report(done)
        assert reported.retries == [Retry(0.5, HANDLER, (key(entry),))]
        assert reported.parkings == [] and len(t) == 1
    assert t.report(ok(HANDLER, key(entry))).ack_soon is True  # space returned: applied, acked


def test_counted_failures_back_off_then_park_once_and_move_on() -> None:
    t = tracker(max_attempts=3)
    entry = event_entry(1)
    k = key(entry)
    t.admit([entry])
    delays: list[float] = []
    for _ in range(2):
        t.batch(VIEWS, [k], now=0.0)
        reported = t.report(failed(VIEWS, "boom", k))
        assert reported.parkings == [] and reported.onward == []
        delays.extend(r.delay for r in reported.retries)
    assert delays == [RETRY_FAILED_SECONDS, RETRY_FAILED_SECONDS * 2]
    t.batch(VIEWS, [k], now=0.0)
    reported = t.report(failed(VIEWS, "boom", k))
    assert reported.parkings == [Parking(entry, f"{VIEWS}: boom", 3, ack=False)]
    assert reported.retries == [] and reported.onward == [(STATS, [k])]  # the next projection still gets it
    for _ in range(3):  # the next projection gives up too: parked already, not again
        t.batch(STATS, [k], now=0.0)
        reported = t.report(failed(STATS, "bang", k))
        assert reported.parkings == []
    assert reported.onward == [(QUEUE, [k])]
    t.batch(QUEUE, [k], now=0.0)
    assert t.report(ok(QUEUE, k)).ack_soon and t.take_acks() == [entry]


def test_attempts_are_counted_per_worker() -> None:
    t = tracker(max_attempts=2)
    entry = event_entry(1)
    k = key(entry)
    t.admit([entry])
    t.batch(VIEWS, [k], now=0.0)
    assert t.report(failed(VIEWS, "boom", k)).retries[0].delay == RETRY_FAILED_SECONDS
    t.batch(VIEWS, [k], now=0.0)
    assert t.report(ok(VIEWS, k)).onward == [(STATS, [k])]
    t.batch(STATS, [k], now=0.0)
    assert t.report(failed(STATS, "bang", k)).retries[0].delay == RETRY_FAILED_SECONDS  # first for STATS


def test_a_report_about_what_a_worker_no_longer_owes_changes_nothing() -> None:
    t = tracker()
    entry = event_entry(1)
    k = key(entry)
    t.admit([entry])
    t.batch(VIEWS, [k], now=0.0)
    t.report(ok(VIEWS, k))
    again = t.report(ok(VIEWS, k, "s.forum.events/404-0"))  # a duplicate, and a key never seen
    assert (again.onward, again.retries, again.parkings, again.ack_soon) == ([], [], [], False)
    assert len(t) == 1


def test_a_delivery_that_cannot_be_told_frees_the_worker_and_retries_shortly() -> None:
    t = tracker()
    a, b = command_entry(1), command_entry(2)
    t.admit([a, b])
    batch = t.batch(HANDLER, [key(a)], now=0.0)
    assert batch is not None
    assert t.undeliverable(batch) == Retry(RETRY_UNAVAILABLE_SECONDS, HANDLER, (key(a),))
    assert t.batch(HANDLER, [key(b)], now=0.0) is not None  # not busy any more


def test_a_retry_only_delivers_what_is_still_in_flight() -> None:
    t = tracker()
    a, b = command_entry(1), command_entry(2)
    t.admit([a, b])
    t.batch(HANDLER, [key(a), key(b)], now=0.0)
    t.report(ok(HANDLER, key(a)))
    assert t.in_flight([key(a), key(b)]) == [key(b)]


@pytest.mark.parametrize(("count", "room"), [(0, True), (4, True), (5, None), (9, None), (10, False), (11, False)])
def test_the_reader_pauses_at_max_in_flight_and_resumes_below_half(count: int, room: bool | None) -> None:
    t = tracker(max_in_flight=10)
    t.admit([command_entry(n) for n in range(count)])
    assert t.reader_room() is room


def test_a_lingering_worker_gets_what_arrived_during_its_hold_in_one_deliver() -> None:
    t = DeliveryTracker([HANDLER], PROJECTIONS, 3, linger={STATS: 0.05})
    first, second = event_entry(1), event_entry(2)
    t.admit([first, second])
    assert t.hold(VIEWS, [key(first)], now=0.0) is None  # no linger: sent at once
    assert t.batch(VIEWS, [key(first), key(second)], now=0.0) is not None
    onward = t.report(ok(VIEWS, key(first), key(second))).onward
    assert onward == [(STATS, [key(first), key(second)])]
    assert t.hold(STATS, [key(first)], now=0.0) == 0.05  # idle lingering worker: held, release due
    assert t.hold(STATS, [key(second)], now=0.01) == 0.0  # behind the release already due
    assert t.batch(STATS, [], now=0.02) is None
    released = t.release(STATS)
    assert released == [key(first), key(second)]
    batch = t.batch(STATS, released, now=0.05)
    assert batch is not None and batch.keys == (key(first), key(second))
    assert t.report(ok(STATS, *batch.keys)).onward == [(QUEUE, [key(first), key(second)])]
    assert t.release(STATS) == []


def test_a_busy_lingering_worker_queues_as_always_and_a_release_sends_nothing_twice() -> None:
    t = DeliveryTracker([HANDLER], PROJECTIONS, 3, linger={STATS: 0.05})
    first, second = event_entry(1), event_entry(2)
    t.admit([first, second])
    t.batch(VIEWS, [key(first), key(second)], now=0.0)
    t.report(ok(VIEWS, key(first), key(second)))
    assert t.hold(STATS, [key(first)], now=0.0) == 0.05
    assert t.batch(STATS, t.release(STATS), now=0.05) is not None  # first is out: STATS is busy
    assert t.hold(STATS, [key(second)], now=0.06) is None  # busy: not held ...
    assert t.batch(STATS, [key(second)], now=0.06) is None  # ... but queued behind the Deliver
    reported = t.report(ok(STATS, key(first)))
    assert reported.queued == [key(second)]  # sent when it reports, without lingering
    assert t.release(STATS) == []
