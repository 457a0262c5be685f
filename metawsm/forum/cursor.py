"""Opaque pagination cursors.

Thread lists (search, queues) are ordered newest update first and paginated by keyset on
``(updated_at, thread_id)``: a cursor names the last row of the previous page, and the next
page is every row strictly "older" than it in that order.  Rows that do not change between
requests therefore appear exactly once across pages, with no gaps, however many rows are
inserted in front of the cursor meanwhile.

A thread cursor is the urlsafe base64 (unpadded) of a small JSON array
``[version, updated_at, thread_id]``; clients must treat it as opaque.  Anything that does
not decode to exactly that shape is refused with ``invalid_cursor`` (HTTP 400), never an
internal error.

Event cursors are plain integers: the last ``forum_events.sequence`` a client has seen
(0 = from the start).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from metawsm.forum.errors import ForumError

CURSOR_VERSION = 1
MAX_CURSOR_LENGTH = 512  # a real cursor is ~100 characters; anything much longer is junk

_decoder = msgspec.json.Decoder(tuple[int, str, str])


def invalid_cursor() -> ForumError:
    return ForumError("invalid cursor", code="invalid_cursor")


def encode_thread_cursor(updated_at: str, thread_id: str) -> str:
    raw = msgspec.json.encode([CURSOR_VERSION, updated_at, thread_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_thread_cursor(cursor: str) -> tuple[str, str]:
    """``(updated_at, thread_id)`` of the row a page ended on; ForumError ``invalid_cursor``."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_LENGTH:
        raise invalid_cursor()
    text = cursor.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        # b64decode silently drops characters outside the alphabet; a round trip catches that
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text.rstrip("="):
            raise invalid_cursor()
        version, updated_at, thread_id = _decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise invalid_cursor() from None
    if version != CURSOR_VERSION or not updated_at or not thread_id:
        raise invalid_cursor()
    return updated_at, thread_id


def parse_event_cursor(cursor: Any) -> int:
    """An event cursor: a sequence number >= 0 (``None``/empty means 0)."""
    if cursor is None or cursor == "":
        return 0
    if isinstance(cursor, bool):
        raise invalid_cursor()
    if isinstance(cursor, int):
        value = cursor
    elif isinstance(cursor, str) and cursor.strip().isascii() and cursor.strip().isdigit():
        value = int(cursor.strip())
    else:
        raise invalid_cursor()
    if value < 0 or value > 2**63 - 1:
        raise invalid_cursor()
    return value
