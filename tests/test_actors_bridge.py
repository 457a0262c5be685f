"""The asyncio ↔ actor bridge: ``await system.ask_async(path, message, timeout)``.

The event loop must keep running while an actor works on a request, a timeout must come
back as :class:`ActorTimeout` on time, and an answer that arrives after the caller gave up
must vanish without disturbing the loop.  (pytest-asyncio runs these with asyncio_mode=auto.)
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from metawsm.actors import (
    DEFERRED,
    ActorCrashed,
    ActorSystem,
    ActorTimeout,
    ActorUnavailable,
    ChildSpec,
    DefaultSupervision,
    ManagedActor,
    Ping,
    Refusal,
    Supervisor,
)
from metawsm.actors.bridge import AsyncReply, CallbackReply, ThreadReply
from metawsm.actors.messages import Request
from metawsm.waiting import async_wait_until, wait_until

SMALL = DefaultSupervision(max_restarts=3, within_seconds=5, backoff_initial_ms=20, backoff_max_ms=200)


class Echo(msgspec.Struct, frozen=True):
    value: Any


class Hold(msgspec.Struct, frozen=True):
    """Block until ``gate`` is set, then answer ``value`` (or refuse when ``refuse``)."""

    gate: Any
    value: Any = "released"
    refuse: bool = False


class Boom(msgspec.Struct, frozen=True):
    pass


class Slow(msgspec.Struct, frozen=True):
    seconds: float


class Service(ManagedActor):
    kind = "service"

    def handle(self, message: Any) -> Any:
        match message:
            case Echo(value=value):
                return value
            case Hold(gate=gate, value=value, refuse=refuse):
                gate.wait(10)
                if refuse:
                    raise Refusal("refused too late")
                return value
            case Boom():
                raise RuntimeError("boom")
            case Slow(seconds=seconds):
                time.sleep(seconds)  # simulated work (< 0.5 s)
                return seconds
        return super().handle(message)


class Relay(ManagedActor):
    """Asks ``root/service`` on behalf of its caller with a CallbackReply (no blocking)."""

    kind = "relay"

    def handle(self, message: Any) -> Any:
        if isinstance(message, Echo):
            reply = self.defer_reply()
            target = self.system.directory.lookup("root/service")
            target.tell(
                Request(
                    body=message,
                    reply=CallbackReply(lambda value: reply.resolve(("relayed", value)), reply.fail),
                )
            )
            return DEFERRED
        return super().handle(message)


@pytest.fixture
def system() -> Iterator[ActorSystem]:
    system = ActorSystem(supervision=SMALL)
    try:
        system.start(
            ChildSpec.of(
                Supervisor,
                id="root",
                children=[ChildSpec.of(Service, id="service"), ChildSpec.of(Relay, id="relay")],
            )
        )
        yield system
    finally:
        system.stop()


def _capture_loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    return errors


async def test_ask_async_round_trip(system: ActorSystem) -> None:
    assert await system.ask_async("root/service", Echo({"n": 1}), timeout=5) == {"n": 1}
    assert await system.ask_async("root/service", Ping(), timeout=5) == "pong"


async def test_the_loop_keeps_running_while_an_ask_is_pending(system: ActorSystem) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)  # the concurrent work whose progress we watch

    ticking = asyncio.create_task(ticker())
    gate = threading.Event()
    try:
        pending = asyncio.create_task(system.ask_async("root/service", Hold(gate, value=42), timeout=10))
        await async_wait_until(lambda: ticks >= 1)
        start_ticks = ticks
        await async_wait_until(lambda: ticks >= start_ticks + 20, message="the loop was blocked")
        assert not pending.done()  # the actor is still holding the request
        gate.set()
        assert await pending == 42
    finally:
        gate.set()
        ticking.cancel()


async def test_many_concurrent_async_asks_all_answer(system: ActorSystem) -> None:
    results = await asyncio.gather(*(system.ask_async("root/service", Echo(i), timeout=5) for i in range(200)))
    assert results == list(range(200))


@pytest.mark.parametrize("late", ["value", "refusal"])
async def test_timeout_is_prompt_and_a_late_answer_is_harmless(system: ActorSystem, late: str) -> None:
    errors = _capture_loop_errors()
    gate = threading.Event()

    started = time.monotonic()
    with pytest.raises(ActorTimeout) as timed_out:
        await system.ask_async("root/service", Hold(gate, refuse=(late == "refusal")), timeout=0.2)
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 0.6
    assert timed_out.value.path == "root/service" and timed_out.value.timeout == 0.2

    gate.set()  # now the actor answers the request nobody waits for any more
    # the actor is sequential: once this answer is in, the late one was posted before it
    assert await system.ask_async("root/service", Echo("after"), timeout=5) == "after"
    gc.collect()  # a never-retrieved exception would be reported now
    assert errors == []


async def test_errors_cross_the_bridge(system: ActorSystem) -> None:
    with pytest.raises(ActorCrashed, match="boom"):
        await system.ask_async("root/service", Boom(), timeout=5)
    started = time.monotonic()
    with pytest.raises(ActorUnavailable):
        await system.ask_async("root/nowhere", Ping(), timeout=5)
    assert time.monotonic() - started < 0.5

    await async_wait_until(lambda: _answers(system, "root/service"))
    with pytest.raises(Refusal, match="refused too late"):
        gate = threading.Event()
        gate.set()
        await system.ask_async("root/service", Hold(gate, refuse=True), timeout=5)


async def test_slow_answers_inside_the_timeout_arrive(system: ActorSystem) -> None:
    assert await system.ask_async("root/service", Slow(0.1), timeout=5) == 0.1


async def test_actor_to_actor_continuation_with_callback_reply(system: ActorSystem) -> None:
    assert await system.ask_async("root/relay", Echo("x"), timeout=5) == ("relayed", "x")


async def _answers(system: ActorSystem, path: str) -> bool:
    try:
        return await system.ask_async(path, Ping(), timeout=1) == "pong"
    except (ActorUnavailable, ActorCrashed, ActorTimeout):
        return False


def test_sync_ask_times_out_promptly(system: ActorSystem) -> None:
    gate = threading.Event()
    started = time.monotonic()
    with pytest.raises(ActorTimeout):
        system.ask("root/service", Hold(gate), timeout=0.2)
    assert time.monotonic() - started < 0.6
    gate.set()
    assert system.ask("root/service", Echo(1), timeout=5) == 1


def test_reply_handles_complete_at_most_once() -> None:
    thread_reply = ThreadReply()
    thread_reply.resolve(1)
    thread_reply.resolve(2)
    thread_reply.fail(RuntimeError("late"))
    assert thread_reply.wait(0) == (True, 1)
    assert ThreadReply().wait(0) == (False, None)

    loop = asyncio.new_event_loop()
    try:
        reply = AsyncReply(loop)
        worker = threading.Thread(target=lambda: (reply.resolve("a"), reply.fail(RuntimeError("b"))))
        worker.start()
        wait_until(lambda: not worker.is_alive())
        assert loop.run_until_complete(reply.future) == "a"
    finally:
        loop.close()
    reply.resolve("after close")  # a closed loop is ignored, not an error
    reply.fail(RuntimeError("after close"))
    assert reply.future.result() == "a"
