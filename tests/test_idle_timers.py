"""At rest nothing wakes up that has nothing to do: the paced safety sweeps (issue 19).

The pacing itself is plain bookkeeping (no clock is asserted on): a sweep that finds nothing
doubles its delay up to a ceiling, one that finds work goes back to the base, a poke brings a
far sweep back within the base and makes the one already scheduled stale.
"""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest

from metawsm.actors import ActorSystem
from metawsm.actors.forum.consumer import READER_BLOCK_MAX_MS, READER_BLOCK_MS, _Reader
from metawsm.actors.managed import ManagedActor
from metawsm.actors.scheduler import IdleBackoff, PacedTick, Scheduler
from metawsm.actors.supervisor import SWEEP_IDLE_MAX_SECONDS, SWEEP_SECONDS, ChildSpec, Supervisor
from metawsm.waiting import wait_until


def test_idle_backoff_doubles_while_idle_and_resets_on_activity() -> None:
    backoff = IdleBackoff(1.0, 8.0)
    assert [backoff.next(False) for _ in range(5)] == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert backoff.next(True) == 1.0
    backoff.next(False)
    backoff.reset()
    assert backoff.current == 1.0


@pytest.mark.parametrize("base, ceiling", [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_idle_backoff_refuses_a_nonsense_range(base: float, ceiling: float) -> None:
    with pytest.raises(ValueError):
        IdleBackoff(base, ceiling)


def test_paced_tick_arms_one_token_at_a_time_and_a_poke_supersedes_a_far_tick() -> None:
    armed: list[tuple[float, int]] = []
    tick = PacedTick(1.0, 16.0, lambda delay, token: armed.append((delay, token)))
    tick.start()
    assert armed == [(1.0, 1)]
    for _ in range(4):
        tick.done(active=False)
    assert [d for d, _ in armed] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert tick.current(armed[-1][1]) and not tick.current(armed[-2][1])

    tick.poke()  # the pending tick is 16 s away: a new one within the base supersedes it
    assert armed[-1] == (1.0, 6)
    assert not tick.current(5) and tick.current(6)
    tick.poke()  # already due within the base: nothing more is armed
    assert len(armed) == 6
    assert tick.done(active=True) == 1.0


def test_paced_tick_start_with_an_explicit_first_delay() -> None:
    armed: list[tuple[float, int]] = []
    PacedTick(1.0, 8.0, lambda delay, token: armed.append((delay, token))).start(0.0)
    assert armed == [(0.0, 1)]


class _Hello(msgspec.Struct, frozen=True):
    n: int


class _Later(ManagedActor):
    kind = "later"

    def __init__(self, ctx: Any, seen: list[int], done: threading.Event) -> None:
        super().__init__(ctx)
        self.seen = seen
        self.done = done

    def setup(self) -> None:
        self.tell_self_later(0.01, _Hello(2))
        self.tell_self_later(0.0, _Hello(1))

    def handle(self, message: Any) -> Any:
        match message:
            case _Hello(n=n):
                self.seen.append(n)
                if len(self.seen) == 2:
                    self.done.set()
            case _:
                return super().handle(message)
        return None


def test_tell_self_later_tells_the_incarnation_once() -> None:
    seen: list[int] = []
    done = threading.Event()
    system = ActorSystem()
    system.start(ChildSpec.of(Supervisor, id="root", name="Root",
                              children=[ChildSpec.of(_Later, seen, done, id="later", name="Later")]))
    try:
        wait_until(done.is_set, timeout=10, message="the delayed tells never came")
    finally:
        system.stop()
    assert sorted(seen) == [1, 2]


def test_scheduler_sleeps_until_the_next_deadline_and_runs_callbacks_in_order() -> None:
    scheduler = Scheduler("test-scheduler")
    order: list[str] = []
    done = threading.Event()
    try:
        def late() -> None:
            order.append("late")
            done.set()

        scheduler.call_later(0.05, late)
        scheduler.call_later(0.0, lambda: order.append("now"))
        wait_until(done.is_set, timeout=10, message="the scheduler never ran the callbacks")
    finally:
        scheduler.stop()
    assert order == ["now", "late"]


def test_the_supervisor_sweep_backs_off_to_its_ceiling() -> None:
    assert SWEEP_SECONDS < SWEEP_IDLE_MAX_SECONDS
    backoff = IdleBackoff(SWEEP_SECONDS, SWEEP_IDLE_MAX_SECONDS)
    delays = [backoff.next(False) for _ in range(10)]
    assert delays[-1] == SWEEP_IDLE_MAX_SECONDS


class _FakeBus:
    """Answers the reader's reads from a script; records the block asked for each time."""

    def __init__(self, script: list[list[str]], reader_box: list[_Reader], stop_before: int) -> None:
        self.script = script
        self.blocks: list[int] = []
        self.reader_box = reader_box
        self.stop_before = stop_before  # the read with this index returns after stop()

    def read(self, topics: Any, count: int, block_ms: int) -> list[str]:
        self.blocks.append(block_ms)
        index = len(self.blocks) - 1
        if index == self.stop_before:
            self.reader_box[0].stop()  # as teardown would, while this read blocks
        return self.script[index]

    def close(self) -> None:
        pass


class _Ref:
    def __init__(self) -> None:
        self.told: list[Any] = []

    def tell(self, message: Any) -> None:
        self.told.append(message)


def test_the_reader_blocks_longer_while_the_stream_is_idle_and_short_again_after_entries() -> None:
    script: list[list[str]] = [[], [], [], [], [], [], [], ["e1"], [], []]
    box: list[_Reader] = []
    bus = _FakeBus(script, box, stop_before=len(script) - 1)
    ref = _Ref()
    reader = _Reader(1, bus, ["t"], ref, "test-reader")
    box.append(reader)
    reader.run()  # on this thread: it ends at the scripted stop
    blocks = bus.blocks
    assert blocks[0] == READER_BLOCK_MS
    assert blocks[1] == 2 * READER_BLOCK_MS
    assert max(blocks) == READER_BLOCK_MAX_MS  # never beyond the bus's longest block
    assert blocks[8] == READER_BLOCK_MS  # right after a read that returned entries
    assert [m.entries for m in ref.told] == [[], ["e1"]]  # the first read, then what came


def test_a_stopped_reader_hands_what_its_last_read_returned_to_the_current_consumer() -> None:
    box: list[_Reader] = []
    bus = _FakeBus([[], ["late-1", "late-2"]], box, stop_before=1)
    ref = _Ref()
    handed: list[list[str]] = []
    reader = _Reader(1, bus, ["t"], ref, "test-reader", handoff=handed.append)
    box.append(reader)
    reader.run()
    assert handed == [["late-1", "late-2"]]
    assert [m.entries for m in ref.told] == [[]]  # the stopped incarnation is told nothing more


def test_a_write_after_the_consumer_crashed_at_rest_is_delivered(forum_daemon: Any) -> None:
    """The crashed consumer's reader may still sit in a long idle block and take the next entry:
    it hands it to the new incarnation (or the late reclaim does), so nothing waits or is lost."""
    from metawsm.actors.forum.messages import CONSUMER
    from metawsm.forum.projections.registry import PROJECTION_NAMES
    from metawsm.forum.requests import OpenThreadRequest
    from metawsm.store import open_connection

    forum = forum_daemon.forum
    system = forum_daemon.system
    forum.submit_sync(OpenThreadRequest(ticket="T", title="before", body="b"))
    old = system.directory.get(CONSUMER)
    # Let the reader's block grow past its short value (it doubles on every empty read).
    threading.Event().wait(READER_BLOCK_MAX_MS / 1000 * 1.5)
    system.crash(CONSUMER)
    wait_until(lambda: system.directory.get(CONSUMER) not in (None, old), timeout=10,
               message="the consumer did not come back")
    opened = forum.submit_sync(OpenThreadRequest(ticket="T", title="after", body="b"), wait=30.0)
    assert opened.status == "applied"

    def every_projection_has_both() -> bool:
        conn = open_connection(forum_daemon.daemon.db_path, read_only=True)
        try:
            rows = dict(conn.execute("SELECT projection_name, last_sequence FROM forum_projection_checkpoints"))
        finally:
            conn.close()
        return all(rows.get(name, 0) >= 2 for name in PROJECTION_NAMES)

    wait_until(every_projection_has_both, timeout=30, message="a projection missed the write made after the crash")
