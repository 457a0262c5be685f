"""UTC timestamps in the one wire format the product uses: RFC 3339 with microseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

# now_text() runs several times per forum write; strftime for every call was a visible
# share of the daemon's CPU, so the seconds part is formatted once per second.
_second_prefix: tuple[int, str] = (-1, "")


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """``2026-11-27T12:00:00.123456Z`` — fixed width, so strings sort like times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_text() -> str:
    """The current time in the format of :func:`format_time`."""
    global _second_prefix
    second, micro = divmod(time.time_ns() // 1000, 1_000_000)
    cached_second, prefix = _second_prefix
    if cached_second != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_prefix = (second, prefix)
    return f"{prefix}.{micro:06d}Z"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
