"""Reply handles: how a thread or an asyncio coroutine waits for an actor's answer.

Pykka's future implements ``__await__`` with a blocking ``get()``, which would freeze the
event loop.  Instead a request carries a reply handle; the actor thread completes an
``asyncio.Future`` through ``loop.call_soon_threadsafe`` and the coroutine awaits that.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class AsyncReply:
    """Completes an ``asyncio.Future`` on its own loop from any thread, at most once."""

    __slots__ = ("_loop", "_future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[Any] = loop.create_future()

    @property
    def future(self) -> asyncio.Future[Any]:
        return self._future

    def resolve(self, value: Any) -> None:
        self._post(self._set_result, value)

    def fail(self, error: BaseException) -> None:
        self._post(self._set_exception, error)

    def _post(self, fn: Any, arg: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _set_result(self, value: Any) -> None:
        if not self._future.done():
            self._future.set_result(value)

    def _set_exception(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)


class ThreadReply:
    """A blocking reply slot for callers on plain threads (including other actors)."""

    __slots__ = ("_event", "_value", "_error")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def resolve(self, value: Any) -> None:
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def wait(self, timeout: float) -> tuple[bool, Any]:
        """Return ``(answered, value)``; raises the actor's error when it failed."""
        if not self._event.wait(timeout):
            return False, None
        if self._error is not None:
            raise self._error
        return True, self._value


class CallbackReply:
    """Delivers the answer to a callback on the actor's thread (actor-to-actor continuation)."""

    __slots__ = ("_on_value", "_on_error")

    def __init__(self, on_value: Any, on_error: Any) -> None:
        self._on_value = on_value
        self._on_error = on_error

    def resolve(self, value: Any) -> None:
        self._on_value(value)

    def fail(self, error: BaseException) -> None:
        self._on_error(error)
