"""The Redis Streams bus under the forum pipeline: publish, group reads, acks, reclaim, trim.

Synchronous (redis-py) because its callers, the ``OutboxRelay`` and ``StreamConsumer``
actors, run on their own threads.  What this module guarantees and what it leaves to them:

* One stream per topic, key ``<stream_name>.<topic>``; one consumer group on each stream,
  created from id ``0`` with ``MKSTREAM`` so a group made after the first publish still sees
  every entry.
* Every entry has four fields: ``message_id``, ``topic``, ``message_key`` and ``payload``.
  The payload is opaque bytes; encoding it is the caller's business.
* Delivery is at-least-once.  A failed publish may have added some entries before the error,
  so the relay keeps its rows pending and publishes them again; consumers dedupe.  Acks happen
  only when the caller says so (after its SQLite commit).
* Errors come out as three types, each with a one-line message: :class:`BusUnavailable`
  (cannot reach Redis, or Redis refuses work for now), :class:`GroupMissing` (``NOGROUP``:
  Redis lost the group, typically a restart that came back empty) and :class:`TransportError`
  (anything else, e.g. a key that is not a stream).

Replies are parsed from the raw RESP2 shapes (response callbacks are switched off for the
commands used here), so the code does not depend on how a redis-py version post-processes
stream replies.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, NoReturn

import msgspec
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from metawsm.redact import redact_url  # re-exported: callers and tests import it from here

DEFAULT_STREAM_NAME = "metawsm-forum"
DEFAULT_GROUP = "metawsm-forum"
DEFAULT_CONSUMER = "operator"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_MAX_BLOCK_MS = 5_000
DEFAULT_RECLAIM_MIN_IDLE_MS = 30_000

# XAUTOCLAIM calls one reclaim() makes per stream before it stops and remembers the cursor.
_MAX_RECLAIM_ROUNDS = 10

# Error prefixes that mean "Redis cannot do this right now", not "the request is wrong".
_TRANSIENT_PREFIXES = ("LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN", "OOM", "MISCONF")

# Commands whose replies we parse ourselves (raw RESP2 lists of bytes / ints / None).
_RAW_COMMANDS = (
    "XADD",
    "XACK",
    "XREADGROUP",
    "XAUTOCLAIM",
    "XPENDING",
    "XTRIM",
    "XGROUP",
    "XINFO",
    "TYPE",
)

_NOGROUP_KEY = re.compile(r"No such key '([^']*)'")

_FIELDS = (b"message_id", b"topic", b"message_key", b"payload")

# Trim each stream below the smallest id some consumer group may still need: the oldest
# pending (delivered, unacknowledged) id, or the first id after last-delivered-id
# (undelivered).  Atomic, so no read, ack or group change can slip in between the look and
# the cut.  Streams without our group are left alone: the group would be created from 0
# later and must not find entries missing.  ARGV[1] = our group.  Returns one count per key.
_TRIM_SCRIPT = """
local MAXSEQ = '18446744073709551615'

local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end

local function cmp_digits(a, b)
  if #a ~= #b then
    if #a < #b then return -1 end
    return 1
  end
  if a == b then return 0 end
  if a < b then return -1 end
  return 1
end

local function id_less(x, y)
  local xm, xs = split(x)
  local ym, ys = split(y)
  local c = cmp_digits(xm, ym)
  if c ~= 0 then return c < 0 end
  return cmp_digits(xs, ys) < 0
end

local function incr_digits(s)
  local bytes = {string.byte(s, 1, -1)}
  local i = #bytes
  while i >= 1 do
    if bytes[i] == 57 then
      bytes[i] = 48
      i = i - 1
    else
      bytes[i] = bytes[i] + 1
      return string.char(unpack(bytes))
    end
  end
  return '1' .. string.char(unpack(bytes))
end

local function successor(id)
  local ms, seq = split(id)
  if seq == MAXSEQ then return incr_digits(ms) .. '-0' end
  return ms .. '-' .. incr_digits(seq)
end

local trimmed = {}
for i, key in ipairs(KEYS) do
  trimmed[i] = 0
  if redis.call('TYPE', key)['ok'] == 'stream' then
    local groups = redis.call('XINFO', 'GROUPS', key)
    local ours = false
    local floor = nil
    for _, flat in ipairs(groups) do
      local info = {}
      for j = 1, #flat, 2 do info[flat[j]] = flat[j + 1] end
      if info['name'] == ARGV[1] then ours = true end
      local candidate = successor(info['last-delivered-id'])
      if tonumber(info['pending']) > 0 then
        local oldest = redis.call('XPENDING', key, info['name'])[2]
        if oldest and id_less(oldest, candidate) then candidate = oldest end
      end
      if floor == nil or id_less(candidate, floor) then floor = candidate end
    end
    if ours and floor ~= nil then
      trimmed[i] = redis.call('XTRIM', key, 'MINID', '=', floor)
    end
  end
end
return trimmed
"""


# -- data shapes -------------------------------------------------------------------------------


class OutboundEntry(msgspec.Struct, frozen=True):
    """One message to publish on the stream of ``topic``."""

    message_id: str
    topic: str
    message_key: str
    payload: bytes


class InboundEntry(msgspec.Struct, frozen=True):
    """One entry read (or reclaimed) from ``stream``; ack it with :meth:`StreamBus.ack`.

    Fields missing from a foreign or damaged entry come back empty (``""`` / ``b""``) so the
    caller can still park and ack it instead of seeing it forever.
    """

    stream: str
    entry_id: str
    message_id: str
    topic: str
    message_key: str
    payload: bytes


class TopicInfo(msgspec.Struct, frozen=True):
    """What the forum debug snapshot shows per topic (``bus.topics``)."""

    topic: str
    stream: str
    stream_exists: bool
    stream_length: int
    last_generated_id: str | None
    consumer_group_present: bool
    consumer_group_pending: int
    consumer_group_lag: int | None


# -- errors ------------------------------------------------------------------------------------


class TransportError(Exception):
    """Base of the bus errors; raised as such for Redis errors that are neither below."""


class BusUnavailable(TransportError):
    """Redis cannot be reached or refuses work for now; retry later.

    The message is one line: ``redis at <url> is unavailable: <reason>``.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"redis at {url} is unavailable: {reason}")
        self.url = url
        self.reason = reason


class GroupMissing(TransportError):
    """Redis answered ``NOGROUP`` for ``streams``: the stream or its group is gone.

    Usually Redis restarted without its data.  Recreate the groups
    (:meth:`StreamBus.ensure_groups`) and run the reconcile pass.
    """

    def __init__(self, streams: Sequence[str], group: str, reason: str) -> None:
        names = ", ".join(streams)
        super().__init__(f"consumer group {group!r} missing on stream(s) {names}: {reason}")
        self.streams = tuple(streams)
        self.group = group
        self.reason = reason


# -- helpers -----------------------------------------------------------------------------------


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def consumer_name(base: str = DEFAULT_CONSUMER, pid: int | None = None) -> str:
    """``<base>-<pid>``: the consumer name to use when several daemons share one group."""
    return f"{base}-{os.getpid() if pid is None else pid}"


def open_client(url: str, socket_timeout: float | None, client_name: str | None = None) -> redis.Redis:
    """A redis-py client for ``redis://``/``rediss://``/``unix://`` URLs that fails fast.

    One immediate retry on a connection error (a pooled connection that died with a Redis
    restart), no retry on timeouts, no backoff: the actors own their backoff.
    """
    connect_timeout = socket_timeout if socket_timeout is not None else DEFAULT_SOCKET_TIMEOUT
    client = redis.Redis.from_url(
        url,
        decode_responses=False,
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        client_name=_client_name(client_name) if client_name else None,
    )
    for command in _RAW_COMMANDS:
        client.set_response_callback(command, _raw)
    return client


def _client_name(text: str) -> str:
    """``CLIENT SETNAME`` refuses spaces and control characters; replace them."""
    return "".join(char if char.isprintable() and not char.isspace() else "_" for char in text)


def _raw(response: Any, **_options: Any) -> Any:
    return response


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _pairs(flat: Sequence[Any] | None) -> dict[bytes, Any]:
    if not flat:
        return {}
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def is_transient(error: redis.ResponseError) -> bool:
    """A Redis error reply that means "not now" (loading, read-only replica, out of memory,
    ...): the bus is unavailable, the request itself is fine."""
    return one_line(error).startswith(_TRANSIENT_PREFIXES)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


# -- the bus -----------------------------------------------------------------------------------


class StreamBus:
    """Publish to and consume from the per-topic streams of one namespace.

    Two connection pools: one for ``XREADGROUP ... BLOCK`` whose socket timeout is
    ``socket_timeout + max_block_ms`` (a block must never look like a dead server), and one
    for everything else with plain ``socket_timeout``; ``CLIENT LIST`` names them
    ``<stream_name>:<consumer>:read`` and ``<stream_name>:<consumer>``.  Thread-safe as redis-py clients are;
    normally the relay and the consumer each hold their own instance.
    """

    def __init__(
        self,
        url: str,
        stream_name: str = DEFAULT_STREAM_NAME,
        group: str = DEFAULT_GROUP,
        consumer: str = DEFAULT_CONSUMER,
        *,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT,
        max_block_ms: int = DEFAULT_MAX_BLOCK_MS,
    ) -> None:
        for label, value in (("stream_name", stream_name), ("group", group), ("consumer", consumer)):
            if not value or value != value.strip():
                raise ValueError(f"{label} must be a non-empty name without surrounding blanks")
        if socket_timeout <= 0:
            raise ValueError(f"socket_timeout must be positive, got {socket_timeout}")
        if max_block_ms <= 0:
            raise ValueError(f"max_block_ms must be positive, got {max_block_ms}")
        self.url = url
        self.stream_name = stream_name
        self.group = group
        self.consumer = consumer
        self.socket_timeout = socket_timeout
        self.max_block_ms = max_block_ms
        self._shown_url = redact_url(url)
        # Named so CLIENT LIST shows who is who (and which connection is the blocking one).
        self._client = open_client(url, socket_timeout, f"{stream_name}:{consumer}")
        self._reader = open_client(
            url, socket_timeout + max_block_ms / 1000.0, f"{stream_name}:{consumer}:read"
        )
        self._trim = self._client.register_script(_TRIM_SCRIPT)
        self._lock = threading.Lock()
        self._known_groups: set[str] = set()
        self._reclaim_cursors: dict[str, str] = {}

    # -- naming ----------------------------------------------------------------------------

    def stream_key(self, topic: str) -> str:
        """The Redis key of ``topic``'s stream, e.g. ``metawsm-forum.forum.commands.open_thread``."""
        if not topic:
            raise ValueError("topic must not be empty")
        return f"{self.stream_name}.{topic}"

    def topic_of(self, stream: str) -> str:
        prefix = f"{self.stream_name}."
        return stream[len(prefix):] if stream.startswith(prefix) else stream

    def _keys(self, topics: Iterable[str]) -> list[str]:
        return _unique(self.stream_key(topic) for topic in topics)

    # -- health ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Return if Redis answers; raise :class:`BusUnavailable` otherwise."""
        with self._guard("PING"):
            self._client.ping()

    # -- producing -------------------------------------------------------------------------

    def publish(self, entries: Sequence[OutboundEntry]) -> list[str]:
        """``XADD`` every entry in one pipeline; return the stream entry ids, in order.

        On :class:`BusUnavailable` some entries may have been added anyway: keep them all
        pending and publish them again (consumers dedupe by message id).
        """
        if not entries:
            return []
        keys = [self.stream_key(entry.topic) for entry in entries]
        with self._guard("XADD", keys):
            pipe = self._client.pipeline(transaction=False)
            for key, entry in zip(keys, entries):
                pipe.execute_command(
                    "XADD", key, "*",
                    "message_id", entry.message_id,
                    "topic", entry.topic,
                    "message_key", entry.message_key,
                    "payload", entry.payload,
                )
            replies = self._execute(pipe, "XADD", keys)
        return [_text(reply) for reply in replies]

    # -- groups ----------------------------------------------------------------------------

    def ensure_groups(self, topics: Iterable[str]) -> list[str]:
        """Create our group (from id 0, ``MKSTREAM``) on each topic's stream not yet known.

        An existing group (``BUSYGROUP``) counts as success.  Returns the stream keys where
        the group was created just now.
        """
        with self._lock:
            missing = [key for key in self._keys(topics) if key not in self._known_groups]
        if not missing:
            return []
        with self._guard("XGROUP CREATE", missing):
            pipe = self._client.pipeline(transaction=False)
            for key in missing:
                pipe.execute_command("XGROUP", "CREATE", key, self.group, "0", "MKSTREAM")
            replies = pipe.execute(raise_on_error=False)
        created: list[str] = []
        for key, reply in zip(missing, replies):
            if isinstance(reply, redis.ResponseError):
                if str(reply).startswith("BUSYGROUP"):
                    continue
                self._raise_from(reply, "XGROUP CREATE", [key])
            created.append(key)
        with self._lock:
            self._known_groups.update(missing)
        return created

    def forget_groups(self) -> None:
        """Drop the cache of groups known to exist, so :meth:`ensure_groups` asks Redis again."""
        with self._lock:
            self._known_groups.clear()
            self._reclaim_cursors.clear()

    # -- consuming -------------------------------------------------------------------------

    def read(self, topics: Iterable[str], count: int, block_ms: int | None = None) -> list[InboundEntry]:
        """New entries for our consumer: ``XREADGROUP ... COUNT count [BLOCK block_ms] STREAMS``.

        ``block_ms`` None does not block; otherwise it must be within ``1..max_block_ms``
        (0 would mean "forever" to Redis).  Up to ``count`` entries per stream.  Raises
        :class:`GroupMissing` on ``NOGROUP`` and :class:`BusUnavailable` on connection trouble.
        """
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        if block_ms is not None and not 0 < block_ms <= self.max_block_ms:
            raise ValueError(f"block_ms must be within 1..{self.max_block_ms}, got {block_ms}")
        keys = self._keys(topics)
        if not keys:
            return []
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", *keys, *([">"] * len(keys))]
        with self._guard("XREADGROUP", keys):
            reply = self._reader.execute_command(*args)
        entries: list[InboundEntry] = []
        for stream_reply in reply or ():
            stream = _text(stream_reply[0])
            for raw in stream_reply[1] or ():
                entry = self._entry(stream, raw)
                if entry is not None:
                    entries.append(entry)
        return entries

    def ack(self, entries: Iterable[InboundEntry]) -> int:
        """``XACK`` the entries, one command per stream in one pipeline; returns how many Redis
        still had pending (an entry acked twice or reclaimed-and-acked elsewhere counts 0)."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.entry_id)
        if not by_stream:
            return 0
        with self._guard("XACK", list(by_stream)):
            pipe = self._client.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.execute_command("XACK", stream, self.group, *ids)
            replies = self._execute(pipe, "XACK", list(by_stream))
        return sum(int(reply) for reply in replies)

    def reclaim(
        self, topics: Iterable[str], min_idle_ms: int = DEFAULT_RECLAIM_MIN_IDLE_MS, count: int = 100
    ) -> list[tuple[InboundEntry, int]]:
        """Take over entries pending longer than ``min_idle_ms`` (any consumer, us included).

        ``XAUTOCLAIM`` per stream, up to ``count`` entries per stream, following the cursor
        for a bounded number of rounds; a pass cut short resumes where it stopped on the next
        call.  Returns each entry with its delivery count (this delivery included), for the
        caller's park-after-N-failures rule.  Entries deleted from the stream while pending
        are dropped from the pending list by Redis and are not returned.
        """
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        if min_idle_ms < 0:
            raise ValueError(f"min_idle_ms must be >= 0, got {min_idle_ms}")
        claimed: list[InboundEntry] = []
        for key in self._keys(topics):
            claimed.extend(self._reclaim_stream(key, min_idle_ms, count))
        if not claimed:
            return []
        streams = _unique(entry.stream for entry in claimed)
        with self._guard("XPENDING", streams):
            pipe = self._client.pipeline(transaction=False)
            for entry in claimed:
                pipe.execute_command(
                    "XPENDING", entry.stream, self.group, entry.entry_id, entry.entry_id, 1
                )
            replies = self._execute(pipe, "XPENDING", [entry.stream for entry in claimed])
        result: list[tuple[InboundEntry, int]] = []
        for entry, reply in zip(claimed, replies):
            # [[id, consumer, idle_ms, deliveries]]; empty or another owner means someone
            # acked or took it in the meantime: theirs now.
            if reply and _text(reply[0][1]) == self.consumer:
                result.append((entry, int(reply[0][3])))
        return result

    def _reclaim_stream(self, key: str, min_idle_ms: int, count: int) -> list[InboundEntry]:
        with self._lock:
            cursor = self._reclaim_cursors.get(key, "0-0")
        claimed: list[InboundEntry] = []
        for _ in range(_MAX_RECLAIM_ROUNDS):
            with self._guard("XAUTOCLAIM", [key]):
                reply = self._client.execute_command(
                    "XAUTOCLAIM", key, self.group, self.consumer, min_idle_ms, cursor,
                    "COUNT", count - len(claimed),
                )
            cursor = _text(reply[0])
            for raw in reply[1] or ():
                entry = self._entry(key, raw)
                if entry is not None:
                    claimed.append(entry)
            if cursor == "0-0" or len(claimed) >= count:
                break
        with self._lock:
            if cursor == "0-0":
                self._reclaim_cursors.pop(key, None)
            else:
                self._reclaim_cursors[key] = cursor
        return claimed

    def _entry(self, stream: str, raw: Sequence[Any] | None) -> InboundEntry | None:
        if raw is None or raw[1] is None:  # an id whose entry was deleted
            return None
        fields = _pairs(raw[1])
        topic = fields.get(b"topic")
        return InboundEntry(
            stream=stream,
            entry_id=_text(raw[0]),
            message_id=_text(fields.get(b"message_id", b"")),
            topic=_text(topic) if topic is not None else self.topic_of(stream),
            message_key=_text(fields.get(b"message_key", b"")),
            payload=bytes(fields.get(b"payload", b"")),
        )

    # -- housekeeping ----------------------------------------------------------------------

    def pending_count(self, topics: Iterable[str]) -> int:
        """Entries delivered to our group and not yet acked, summed over the topics' streams
        (a missing stream or group counts 0)."""
        keys = self._keys(topics)
        if not keys:
            return 0
        with self._guard("XPENDING", keys):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("XPENDING", key, self.group)
            replies = pipe.execute(raise_on_error=False)
        total = 0
        for key, reply in zip(keys, replies):
            if isinstance(reply, redis.ResponseError):
                if str(reply).startswith("NOGROUP"):
                    continue
                self._raise_from(reply, "XPENDING", [key])
            total += int(reply[0])
        return total

    def trim_acknowledged(self, topics: Iterable[str]) -> int:
        """Drop entries every consumer group of each stream is done with; returns how many.

        Each stream is cut (``XTRIM MINID``, exact) at the oldest id some group still needs:
        its oldest pending entry, or the first entry after its ``last-delivered-id``.  A
        stream without our group, or without any group, is not touched.  Atomic per call.
        """
        keys = self._keys(topics)
        if not keys:
            return 0
        with self._guard("XTRIM", keys):
            counts = self._trim(keys=keys, args=[self.group])
        return sum(int(value) for value in counts)

    def trim_older_than(self, topics: Iterable[str], cut_ms: int) -> int:
        """Drop entries added before ``cut_ms`` (Unix milliseconds) from each stream; returns how many.

        ``XTRIM MINID <cut_ms>-0``: entry ids start with the time they were added.  No group is
        asked, so use it only for streams nobody in this daemon consumes (the integration topics);
        consumed streams are cut by :meth:`trim_acknowledged`.  A missing stream is left missing.
        """
        if cut_ms <= 0:
            return 0
        keys = self._keys(topics)
        if not keys:
            return 0
        with self._guard("XTRIM", keys):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("XTRIM", key, "MINID", "=", f"{cut_ms}-0")
            replies = self._execute(pipe, "XTRIM", keys)
        return sum(int(reply) for reply in replies)

    def describe_topics(self, topics: Iterable[str]) -> list[TopicInfo]:
        """Stream and group state per topic, for the debug snapshot (``bus.topics``)."""
        topic_list = _unique(topics)
        keys = [self.stream_key(topic) for topic in topic_list]
        if not keys:
            return []
        with self._guard("XINFO", keys):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.execute_command("TYPE", key)
                pipe.execute_command("XINFO", "STREAM", key)
                pipe.execute_command("XINFO", "GROUPS", key)
            replies = pipe.execute(raise_on_error=False)
        infos: list[TopicInfo] = []
        for index, (topic, key) in enumerate(zip(topic_list, keys)):
            kind, stream_reply, groups_reply = replies[3 * index: 3 * index + 3]
            kind_text = _text(kind)
            if kind_text == "none":
                infos.append(TopicInfo(topic, key, False, 0, None, False, 0, None))
                continue
            if kind_text != "stream":
                raise TransportError(f"redis key {key} holds a {kind_text}, not a stream")
            for reply in (stream_reply, groups_reply):
                if isinstance(reply, redis.ResponseError):
                    self._raise_from(reply, "XINFO", [key])
            stream = _pairs(stream_reply)
            group: dict[bytes, Any] | None = None
            for flat in groups_reply or ():
                fields = _pairs(flat)
                if _text(fields.get(b"name", b"")) == self.group:
                    group = fields
                    break
            lag = group.get(b"lag") if group is not None else None
            infos.append(
                TopicInfo(
                    topic=topic,
                    stream=key,
                    stream_exists=True,
                    stream_length=int(stream.get(b"length", 0)),
                    last_generated_id=_text(stream[b"last-generated-id"])
                    if stream.get(b"last-generated-id") is not None
                    else None,
                    consumer_group_present=group is not None,
                    consumer_group_pending=int(group.get(b"pending", 0)) if group is not None else 0,
                    consumer_group_lag=int(lag) if lag is not None else None,
                )
            )
        return infos

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Close both connection pools; further calls reconnect."""
        self._client.close()
        self._reader.close()

    def __enter__(self) -> StreamBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"StreamBus({self._shown_url}, stream={self.stream_name!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    # -- error mapping ---------------------------------------------------------------------

    @contextmanager
    def _guard(self, what: str, keys: Sequence[str] = ()) -> Iterator[None]:
        try:
            yield
        except redis.ResponseError as error:
            self._raise_from(error, what, keys)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise BusUnavailable(self._shown_url, one_line(error)) from error
        except redis.RedisError as error:
            raise TransportError(f"{what} on {self._shown_url} failed: {one_line(error)}") from error

    def _execute(self, pipe: Any, what: str, keys: Sequence[str]) -> list[Any]:
        """Run ``pipe`` (inside a guard) and raise the first command error, unannotated."""
        replies: list[Any] = pipe.execute(raise_on_error=False)
        for index, reply in enumerate(replies):
            if isinstance(reply, redis.ResponseError):
                self._raise_from(reply, what, [keys[index]] if index < len(keys) else keys)
        return replies

    def _raise_from(self, error: redis.ResponseError, what: str, keys: Sequence[str]) -> NoReturn:
        text = one_line(error)
        if text.startswith("NOGROUP"):
            # Redis lost groups (usually all of them at once): ask again next time.
            self.forget_groups()
            named = _NOGROUP_KEY.search(text)
            streams = [named.group(1)] if named else list(keys)
            raise GroupMissing(streams, self.group, text) from error
        if is_transient(error):
            raise BusUnavailable(self._shown_url, text) from error
        raise TransportError(f"{what} on {self._shown_url} failed: {text}") from error
