"""Tokens for the tests' own HTTP calls, found the way the CLI finds them.

A test talks to a real daemon with tokens on, like any client: it asks ``GET /api/v1/auth``
where the operator token file is, reads it, and sends ``Authorization: Bearer``.  Nothing is
cached: test daemons come and go on reused ports, and a token rotates; the extra local round
trip costs about a millisecond.
"""

from __future__ import annotations

import json
import urllib.request
from urllib.parse import urlsplit


def base_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _token(base: str) -> str:
    with urllib.request.urlopen(base + "/api/v1/auth", timeout=10) as response:
        info = json.loads(response.read())
    if info.get("auth") == "off":
        return ""
    with open(info["token_file"], encoding="utf-8") as file:
        return file.read().strip()


def token_for(url: str) -> str:
    return _token(base_of(url))


def auth_headers(url: str) -> dict[str, str]:
    """``Authorization`` for the daemon serving ``url`` (any URL of it), plus the JSON type for writes."""
    token = token_for(url)
    return {"Authorization": f"Bearer {token}"} if token else {}

