"""The namespace claim: one stream namespace, one database.

Two daemons with different SQLite databases must never consume each other's streams.  On
start the daemon claims ``<stream_name>:owner``: a key holding JSON ``{db_path, pid, host,
claimed_at}`` with a TTL (15 s by default), refreshed every ``ttl / 3`` while it runs.

* :meth:`NamespaceClaim.claim` succeeds when the key is absent (never claimed, expired, or
  lost with a Redis restart), or when it names the same database (same host, same path) and
  the caller holds that database's lock (:mod:`metawsm.daemon_lock`): the lock proves the
  recorded daemon is dead, so a daemon restarted after a crash takes over at once.  Without
  the lock a record of the same database is refused like any other, so no process of the
  same database can take the namespace from a live daemon.  Otherwise it raises
  :class:`NamespaceTaken`.
* :meth:`NamespaceClaim.refresh` extends our claim, re-creates it if Redis lost it, and
  raises :class:`NamespaceTaken` if someone else holds it now.  A lost claim stays lost
  (:attr:`NamespaceClaim.lost`): every later refresh raises the same error again, so the
  owner handles the loss once instead of tripping over a claim it no longer has.
* :meth:`NamespaceClaim.release` deletes the key only while it is still ours.

Every check-and-set runs as one Lua script, so two daemons starting at once cannot both win.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import redis
from redis.commands.core import Script

from metawsm.clock import now_text
from metawsm.redact import redact_url
from metawsm.transport.streams import (
    DEFAULT_SOCKET_TIMEOUT,
    BusUnavailable,
    TransportError,
    is_transient,
    one_line,
    open_client,
)

DEFAULT_CLAIM_TTL = 15.0

# KEYS[1] owner key; ARGV[1] our record; ARGV[2] our db_path; ARGV[3] ttl ms; ARGV[4] our
# host; ARGV[5] '1' when we hold the database lock (a record of our database is a dead one's).
# Returns nil when we hold the key now, else the holder's record.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  if ARGV[5] ~= '1' then
    return current
  end
  local ok, record = pcall(cjson.decode, current)
  if not ok or type(record) ~= 'table' or record['db_path'] ~= ARGV[2] or record['host'] ~= ARGV[4] then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return false
"""

# KEYS[1] owner key; ARGV[1] our record; ARGV[2] ttl ms.
# 1 = extended, 2 = was gone and is set again, otherwise the holder's record.
_REFRESH = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return current
"""

# KEYS[1] owner key; ARGV[1] our record.  1 = deleted, 0 = not ours (or gone).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class OwnerRecord(msgspec.Struct, frozen=True):
    """Who holds a namespace: the daemon's database (absolute path), pid, host, since when."""

    db_path: str
    pid: int
    host: str
    claimed_at: str


class NamespaceTaken(TransportError):
    """Another daemon, with another database, holds the stream namespace."""

    def __init__(self, stream_name: str, owner: OwnerRecord | None) -> None:
        other_db = owner.db_path if owner is not None else "unknown"
        other_pid = str(owner.pid) if owner is not None else "unknown"
        super().__init__(
            f'forum redis stream namespace "{stream_name}" is in use by another metawsm serve '
            f"(db {other_db}, pid {other_pid}); use a different forum.redis.stream or stop that "
            "daemon"
        )
        self.stream_name = stream_name
        self.owner = owner


def owner_key(stream_name: str) -> str:
    return f"{stream_name}:owner"


def _decode_owner(raw: Any) -> OwnerRecord | None:
    if not isinstance(raw, (bytes, str)):
        return None
    try:
        return msgspec.json.decode(raw, type=OwnerRecord)
    except msgspec.DecodeError:
        return None


class NamespaceClaim:
    """This daemon's claim on ``stream_name``, for the database at ``db_path``.

    ``pid`` and ``host`` default to this process; they are parameters so tests can act as
    several daemons.  Pass ``holds_database_lock=True`` only while this process holds the
    database's :class:`~metawsm.daemon_lock.DatabaseLock`: it is what allows taking over a
    record of the same database.  Call :meth:`refresh` every :attr:`refresh_interval` seconds.
    """

    def __init__(
        self,
        url: str,
        stream_name: str,
        db_path: str | os.PathLike[str],
        *,
        ttl: float = DEFAULT_CLAIM_TTL,
        pid: int | None = None,
        host: str | None = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        holds_database_lock: bool = False,
    ) -> None:
        if not stream_name:
            raise ValueError("stream_name must not be empty")
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self.stream_name = stream_name
        self.key = owner_key(stream_name)
        self.db_path = str(Path(db_path).resolve())
        self.ttl = ttl
        self._ttl_ms = max(1, int(ttl * 1000))
        self._pid = os.getpid() if pid is None else pid
        self._host = socket.gethostname() if host is None else host
        self._shown_url = redact_url(url)
        self._client = open_client(url, socket_timeout, f"{stream_name}:claim")
        self._claim = self._client.register_script(_CLAIM)
        self._refresh = self._client.register_script(_REFRESH)
        self._release = self._client.register_script(_RELEASE)
        self._record: OwnerRecord | None = None
        self._encoded: bytes | None = None
        self._takeover = "1" if holds_database_lock else "0"
        self._lost: NamespaceTaken | None = None

    @property
    def refresh_interval(self) -> float:
        return self.ttl / 3

    @property
    def record(self) -> OwnerRecord | None:
        """Our record while we hold the claim (after :meth:`claim`), else None."""
        return self._record

    @property
    def lost(self) -> NamespaceTaken | None:
        """Why our claim was lost (another daemon holds the namespace now), or None."""
        return self._lost

    def claim(self) -> OwnerRecord:
        """Take the namespace or raise :class:`NamespaceTaken`; idempotent while we hold it."""
        record = self._record or OwnerRecord(self.db_path, self._pid, self._host, now_text())
        encoded = self._encoded or msgspec.json.encode(record)
        reply = self._run(self._claim, encoded, self.db_path, self._ttl_ms, self._host, self._takeover)
        if reply is not None:
            raise NamespaceTaken(self.stream_name, _decode_owner(reply))
        self._record, self._encoded, self._lost = record, encoded, None
        return record

    def refresh(self) -> bool:
        """Extend the claim; True if Redis had lost it and it was set again.

        Raises :class:`NamespaceTaken` when another daemon holds the namespace now (ours
        expired while we were stalled and another database claimed it), and raises that same
        error again on every call after, without asking Redis: the claim is lost for good.
        """
        if self._lost is not None:  # a fresh instance: re-raising one object grows its traceback
            raise NamespaceTaken(self._lost.stream_name, self._lost.owner)
        if self._encoded is None:
            raise RuntimeError("refresh() before claim()")
        reply = self._run(self._refresh, self._encoded, self._ttl_ms)
        if reply == 1:
            return False
        if reply == 2:
            return True
        self._record, self._encoded = None, None
        self._lost = NamespaceTaken(self.stream_name, _decode_owner(reply))
        raise self._lost

    def release(self) -> bool:
        """Delete the key if it is still ours; True if it was."""
        if self._encoded is None:
            return False
        released = bool(self._run(self._release, self._encoded))
        self._record, self._encoded = None, None
        return released

    def current_owner(self) -> OwnerRecord | None:
        """Whoever holds the namespace now (None if nobody, or if the record is unreadable)."""
        try:
            raw = self._client.get(self.key)
        except redis.RedisError as error:
            raise self._translate(error) from error
        return _decode_owner(raw)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> NamespaceClaim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, script: Script, *args: bytes | str | int) -> Any:
        try:
            return script(keys=[self.key], args=list(args))
        except redis.RedisError as error:
            raise self._translate(error) from error

    def _translate(self, error: redis.RedisError) -> TransportError:
        if isinstance(error, (redis.ConnectionError, redis.TimeoutError)) or (
            isinstance(error, redis.ResponseError) and is_transient(error)
        ):
            return BusUnavailable(self._shown_url, one_line(error))
        return TransportError(
            f"namespace claim {self.key} on {self._shown_url} failed: {one_line(error)}"
        )
