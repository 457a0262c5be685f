"""Followers (``forum watch``, ``watch``) end cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any


async def until_signalled(work: Coroutine[Any, Any, Any]) -> bool:
    """Run ``work`` until it ends (False) or SIGINT/SIGTERM stops it (True)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def stop() -> None:
        nonlocal stopping
        stopping = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        await work
    except asyncio.CancelledError:
        if not stopping:
            raise
    return stopping
