"""wait_until / async_wait_until: return at the first truthy value, fail loudly at the deadline."""

from __future__ import annotations

import pytest

from metawsm.waiting import async_wait_until, wait_until


def _truthy_on_call(n: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def predicate() -> str | None:
        calls.append(1)
        return "ready" if len(calls) >= n else None

    return calls, predicate


def test_wait_until_returns_value_as_soon_as_true() -> None:
    calls, predicate = _truthy_on_call(3)
    assert wait_until(predicate, timeout=5.0, interval=0.001) == "ready"
    assert len(calls) == 3


def test_wait_until_checks_at_least_once_with_zero_timeout() -> None:
    assert wait_until(lambda: 42, timeout=0) == 42


def test_wait_until_raises_timeout_with_message_and_last_value() -> None:
    with pytest.raises(TimeoutError) as caught:
        wait_until(lambda: [], timeout=0.02, interval=0.001, message="queue never filled")
    text = str(caught.value)
    assert "queue never filled" in text
    assert "last value: []" in text


def test_wait_until_propagates_predicate_errors() -> None:
    def broken() -> bool:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        wait_until(broken, timeout=1.0)


async def test_async_wait_until_accepts_sync_and_async_predicates() -> None:
    calls, predicate = _truthy_on_call(2)
    assert await async_wait_until(predicate, timeout=5.0, interval=0.001) == "ready"
    assert len(calls) == 2

    async_calls: list[int] = []

    async def async_predicate() -> int:
        async_calls.append(1)
        return len(async_calls) if len(async_calls) >= 3 else 0

    assert await async_wait_until(async_predicate, timeout=5.0, interval=0.001) == 3


async def test_async_wait_until_raises_timeout_with_message() -> None:
    async def never() -> bool:
        return False

    with pytest.raises(TimeoutError, match="stream stayed empty.*last value: False"):
        await async_wait_until(never, timeout=0.02, interval=0.001, message="stream stayed empty")
