"""UTC timestamps in the one wire format the product uses: RFC 3339 with microseconds."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    """``2026-11-27T12:00:00.123456Z`` — fixed width, so strings sort like times."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_text() -> str:
    return format_time(utc_now())


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
