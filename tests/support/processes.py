"""Real external processes for tests: required binaries, short temp dirs, cleanup.

The suite runs against a real ``redis-server`` and real ``tmux``; when either is missing the
tests must fail with a message that says what to install, never skip quietly.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import redis

_INSTALL_HINTS = {
    "redis-server": "install Redis 7 (e.g. apt-get install redis-server)",
    "tmux": "install tmux (e.g. apt-get install tmux)",
}


def require_executable(name: str) -> str:
    """Path of ``name`` on PATH, or fail the test (not skip): CI machines must have it."""
    found = shutil.which(name)
    if found is None:
        hint = _INSTALL_HINTS.get(name, f"install {name}")
        pytest.fail(f"{name} is required by the test suite but is not on PATH; {hint}", pytrace=False)
    return found


def short_id() -> str:
    return uuid.uuid4().hex[:8]


def short_tmp_dir(prefix: str = "mw-") -> Path:
    """A fresh directory directly under /tmp, short enough for unix socket paths (107 bytes).

    pytest's ``tmp_path`` can be long enough on its own to push a socket path over the limit.
    """
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def unlink_prefix(url: str, prefix: str) -> int:
    """Delete every key starting with ``prefix`` (SCAN + UNLINK); returns how many."""
    removed = 0
    with redis.Redis.from_url(url) as client:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{_escape_glob(prefix)}*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
    return removed


def _escape_glob(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


def kill_tmux_server(socket_name: str) -> None:
    """``tmux -L <name> kill-server``; a server that never started is not an error."""
    result = subprocess.run(
        ["tmux", "-L", socket_name, "kill-server"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if result.returncode == 0:
        return
    err = result.stderr.lower()
    if "no server running" in err or "error connecting" in err:
        return
    raise RuntimeError(f"tmux -L {socket_name} kill-server failed: {result.stderr.strip()}")
