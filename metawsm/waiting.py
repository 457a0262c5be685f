"""Poll a condition until it holds or a monotonic deadline passes.

This is the one sanctioned way to wait for something asynchronous (in tests above all):
a bare ``sleep`` guesses how long the other side needs and is either flaky or slow, while
polling a predicate returns as soon as the condition holds and fails loudly, with the last
value seen, when it never does.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timeout_error(message: str, timeout: float, last: object) -> TimeoutError:
    return TimeoutError(f"{message} (gave up after {timeout:g}s; last value: {last!r})")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "condition was not met",
) -> T:
    """Return the first truthy value of ``predicate()``; raise ``TimeoutError`` at the deadline.

    The predicate is always evaluated at least once, and once more at the deadline, so a
    zero timeout still means "check now".  Exceptions from the predicate propagate: that is
    how a caller aborts early (for example when the process it waits for has died).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(message, timeout, value)
        time.sleep(min(interval, remaining))


async def async_wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 5.0,
    interval: float = 0.005,
    message: str = "condition was not met",
) -> T:
    """Like :func:`wait_until`, yielding to the event loop; the predicate may be async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(message, timeout, value)
        await asyncio.sleep(min(interval, remaining))
