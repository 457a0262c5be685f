"""StreamBus and NamespaceClaim against real redis-server processes (no fakes, no mocks)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import redis

from metawsm.transport.namespace import NamespaceClaim, NamespaceTaken, OwnerRecord
from metawsm.transport.redis_process import RedisProcess, free_tcp_port
from metawsm.transport.streams import (
    BusUnavailable,
    GroupMissing,
    InboundEntry,
    OutboundEntry,
    StreamBus,
    TopicInfo,
    TransportError,
    consumer_name,
    redact_url,
)
from metawsm.waiting import wait_until

T = TypeVar("T")

OPEN = "forum.commands.open_thread"
POST = "forum.commands.add_post"
EVENTS = "forum.events"
TOPICS = [OPEN, POST, EVENTS]
GROUP = "metawsm-forum"
FAST = 2.0  # seconds within which an unreachable Redis must be reported


BusFactory = Callable[..., StreamBus]


@pytest.fixture
def make_bus(redis_url: str, redis_namespace: str) -> Iterator[BusFactory]:
    """StreamBus instances on the shared server under this test's namespace; closed afterwards."""
    made: list[StreamBus] = []

    def make(consumer: str = "c1", *, url: str | None = None, stream: str | None = None,
             group: str = GROUP, **kwargs: Any) -> StreamBus:
        bus = StreamBus(url or redis_url, stream or redis_namespace, group, consumer, **kwargs)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def _entry(n: int, topic: str = OPEN, payload: bytes | None = None) -> OutboundEntry:
    return OutboundEntry(
        message_id=f"fmsg_{n:04d}",
        topic=topic,
        message_key=f"fthr_{n % 2}",
        payload=payload if payload is not None else f"payload-{n}".encode(),
    )


def _ids(entries: list[InboundEntry]) -> list[str]:
    return [entry.message_id for entry in entries]


def _fails_fast(call: Callable[[], object], limit: float = FAST) -> BusUnavailable:
    """``call`` raises BusUnavailable, and does so within ``limit`` seconds."""
    started = time.monotonic()
    with pytest.raises(BusUnavailable) as caught:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"took {elapsed:.2f}s to report Redis unavailable"
    return caught.value


def _idle_at_least(client: redis.Redis, key: str, ms: int) -> bool:
    pending = client.xpending_range(key, GROUP, "-", "+", 1000)
    return bool(pending) and all(item["time_since_delivered"] >= ms for item in pending)


def _blocked_reader(client: redis.Redis, name: str) -> bool:
    return any(
        c.get("name") == name and c.get("cmd") == "xreadgroup" and "b" in c.get("flags", "")
        for c in client.client_list()
    )


def _in_thread(call: Callable[[], T]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test thread, which re-raises it
            outcome["error"] = error
        outcome["elapsed"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# -- naming and validation -----------------------------------------------------------------


def test_stream_key_joins_stream_name_and_topic(redis_url: str) -> None:
    bus = StreamBus(redis_url, "metawsm-forum", "metawsm-forum", "operator")
    try:
        assert bus.stream_key(OPEN) == "metawsm-forum.forum.commands.open_thread"
        assert bus.topic_of("metawsm-forum.forum.commands.open_thread") == OPEN
        with pytest.raises(ValueError):
            bus.stream_key("")
    finally:
        bus.close()


def test_consumer_name_appends_pid() -> None:
    assert consumer_name("operator", pid=4242) == "operator-4242"


def test_read_refuses_unbounded_or_too_long_blocks(make_bus: BusFactory) -> None:
    bus = make_bus(max_block_ms=1000)
    with pytest.raises(ValueError, match="block_ms"):
        bus.read([OPEN], 10, block_ms=0)  # BLOCK 0 would wait forever
    with pytest.raises(ValueError, match="block_ms"):
        bus.read([OPEN], 10, block_ms=1001)
    with pytest.raises(ValueError, match="count"):
        bus.read([OPEN], 0)


def test_redact_url_hides_password() -> None:
    assert redact_url("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact_url("redis://user:pw@host/1") == "redis://user:***@host/1"
    assert redact_url("unix:///tmp/r.sock?db=0") == "unix:///tmp/r.sock?db=0"
    assert redact_url("unix:///tmp/r.sock?db=0&password=s3cret") == "unix:///tmp/r.sock?db=0&password=***"


# -- publish / read / ack ------------------------------------------------------------------


def test_round_trip_over_several_topics(make_bus: BusFactory, redis_namespace: str) -> None:
    bus = make_bus()
    assert bus.ensure_groups(TOPICS) == [bus.stream_key(t) for t in TOPICS]
    outbound = [
        _entry(1, OPEN),
        _entry(2, POST),
        _entry(3, OPEN, payload=b"\x00\xff\x80binary"),
        _entry(4, EVENTS),
        _entry(5, POST, payload=b""),
    ]
    entry_ids = bus.publish(outbound)
    assert len(entry_ids) == 5 and all("-" in entry_id for entry_id in entry_ids)

    inbound = bus.read(TOPICS, count=10, block_ms=100)
    assert sorted(_ids(inbound)) == [e.message_id for e in outbound]
    by_id = {entry.message_id: entry for entry in inbound}
    for sent, entry_id in zip(outbound, entry_ids):
        got = by_id[sent.message_id]
        assert got.stream == f"{redis_namespace}.{sent.topic}"
        assert got.entry_id == entry_id
        assert (got.topic, got.message_key, got.payload) == (sent.topic, sent.message_key, sent.payload)
    # Per stream, entries come in publish order.
    assert [e.message_id for e in inbound if e.topic == OPEN] == ["fmsg_0001", "fmsg_0003"]
    assert [e.message_id for e in inbound if e.topic == POST] == ["fmsg_0002", "fmsg_0005"]

    assert bus.pending_count(TOPICS) == 5
    assert bus.ack(inbound) == 5
    assert bus.ack(inbound) == 0  # already acked: nothing pending any more
    assert bus.pending_count(TOPICS) == 0
    assert bus.read(TOPICS, count=10) == []

    started = time.monotonic()
    assert bus.read(TOPICS, count=10, block_ms=50) == []
    assert time.monotonic() - started < FAST


def test_count_limits_each_read(make_bus: BusFactory) -> None:
    bus = make_bus()
    bus.ensure_groups([OPEN])
    bus.publish([_entry(n) for n in range(5)])
    first = bus.read([OPEN], count=2)
    second = bus.read([OPEN], count=2)
    third = bus.read([OPEN], count=2)
    assert [_ids(first), _ids(second), _ids(third)] == [
        ["fmsg_0000", "fmsg_0001"], ["fmsg_0002", "fmsg_0003"], ["fmsg_0004"]
    ]


def test_blocked_read_wakes_on_publish(make_bus: BusFactory, raw: redis.Redis,
                                       redis_namespace: str) -> None:
    consumer = make_bus("waiter")
    producer = make_bus("producer")
    consumer.ensure_groups([OPEN, POST])
    thread, outcome = _in_thread(lambda: consumer.read([OPEN, POST], 10, block_ms=5000))
    wait_until(lambda: _blocked_reader(raw, f"{redis_namespace}:waiter:read"),
               message="consumer never blocked in XREADGROUP")
    producer.publish([_entry(7, POST)])
    thread.join(timeout=10)
    assert "error" not in outcome, outcome
    assert _ids(outcome["value"]) == ["fmsg_0007"]
    assert outcome["elapsed"] < 4.0  # woken by the entry, not by the 5 s block running out


def test_group_created_after_publish_sees_earlier_entries(make_bus: BusFactory) -> None:
    relay = make_bus("relay")
    relay.publish([_entry(1), _entry(2)])  # stream exists, no group yet
    consumer = make_bus("c1")
    assert consumer.ensure_groups([OPEN]) == [consumer.stream_key(OPEN)]
    assert _ids(consumer.read([OPEN], 10)) == ["fmsg_0001", "fmsg_0002"]


def test_ensure_groups_tolerates_existing_groups_and_caches(
    make_bus: BusFactory, raw: redis.Redis
) -> None:
    first = make_bus("c1")
    second = make_bus("c2")
    key = first.stream_key(OPEN)
    assert first.ensure_groups([OPEN]) == [key]
    assert second.ensure_groups([OPEN]) == []  # BUSYGROUP is fine
    raw.xgroup_destroy(key, GROUP)
    assert first.ensure_groups([OPEN]) == []  # cached: no round trip
    first.forget_groups()
    assert first.ensure_groups([OPEN]) == [key]


def test_entry_with_missing_fields_is_still_delivered(make_bus: BusFactory, raw: redis.Redis) -> None:
    bus = make_bus()
    bus.ensure_groups([OPEN])
    raw.xadd(bus.stream_key(OPEN), {"payload": b"foreign"})
    [entry] = bus.read([OPEN], 10)
    assert (entry.message_id, entry.topic, entry.message_key, entry.payload) == (
        "", OPEN, "", b"foreign"
    )
    assert bus.ack([entry]) == 1


# -- reclaim -------------------------------------------------------------------------------


def test_unacked_entries_are_reclaimed_with_growing_delivery_counts(
    make_bus: BusFactory, raw: redis.Redis
) -> None:
    dead = make_bus("dead")
    alive = make_bus("alive")
    dead.ensure_groups([OPEN, POST])
    dead.publish([_entry(1, OPEN), _entry(2, POST)])
    read = dead.read([OPEN, POST], 10)
    assert len(read) == 2
    assert alive.reclaim([OPEN, POST], min_idle_ms=60_000, count=10) == []  # not stale yet

    keys = [alive.stream_key(OPEN), alive.stream_key(POST)]
    wait_until(lambda: all(_idle_at_least(raw, key, 2) for key in keys))
    first = alive.reclaim([OPEN, POST], min_idle_ms=1, count=10)
    assert sorted((e.message_id, n) for e, n in first) == [("fmsg_0001", 2), ("fmsg_0002", 2)]
    assert {(e.stream, e.entry_id) for e, _ in first} == {(e.stream, e.entry_id) for e in read}
    assert first[0][0].payload in (b"payload-1", b"payload-2")
    consumers = {c["name"]: c["pending"] for c in
                 raw.xpending(alive.stream_key(OPEN), GROUP)["consumers"]}
    assert consumers == {b"alive": 1}

    # Still unacked: the next reclaim (by anyone, the holder included) counts one more.
    wait_until(lambda: all(_idle_at_least(raw, key, 2) for key in keys))
    second = alive.reclaim([OPEN, POST], min_idle_ms=1, count=10)
    assert sorted(n for _, n in second) == [3, 3]
    assert alive.ack([e for e, _ in second]) == 2
    assert alive.pending_count([OPEN, POST]) == 0
    assert alive.reclaim([OPEN, POST], min_idle_ms=0, count=10) == []


def test_reclaim_is_bounded_and_resumes_where_it_stopped(
    make_bus: BusFactory, raw: redis.Redis
) -> None:
    dead = make_bus("dead")
    alive = make_bus("alive")
    dead.ensure_groups([OPEN])
    dead.publish([_entry(n) for n in range(1, 6)])
    assert len(dead.read([OPEN], 10)) == 5
    key = dead.stream_key(OPEN)
    wait_until(lambda: _idle_at_least(raw, key, 5), message="entries never went idle")

    batches = [[e.message_id for e, _ in alive.reclaim([OPEN], min_idle_ms=1, count=2)]
               for _ in range(3)]
    assert batches == [["fmsg_0001", "fmsg_0002"], ["fmsg_0003", "fmsg_0004"], ["fmsg_0005"]]


def test_reclaim_skips_entries_deleted_while_pending(make_bus: BusFactory, raw: redis.Redis) -> None:
    dead = make_bus("dead")
    alive = make_bus("alive")
    dead.ensure_groups([OPEN])
    dead.publish([_entry(1), _entry(2)])
    read = dead.read([OPEN], 10)
    raw.xdel(dead.stream_key(OPEN), read[0].entry_id)
    reclaimed = wait_until(lambda: alive.reclaim([OPEN], min_idle_ms=1, count=10))
    assert [e.message_id for e, _ in reclaimed] == ["fmsg_0002"]
    assert alive.pending_count([OPEN]) == 1  # Redis dropped the deleted id from the PEL


# -- NOGROUP -------------------------------------------------------------------------------


def test_deleted_stream_raises_group_missing_and_recovers(make_bus: BusFactory, raw: redis.Redis) -> None:
    bus = make_bus()
    bus.ensure_groups([OPEN, POST])
    raw.delete(bus.stream_key(POST))
    with pytest.raises(GroupMissing) as caught:
        bus.read([OPEN, POST], 10)
    assert caught.value.streams == (bus.stream_key(POST),)
    assert "NOGROUP" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(GroupMissing):
        bus.reclaim([POST], min_idle_ms=0, count=10)
    bus.forget_groups()
    assert bus.ensure_groups([OPEN, POST]) == [bus.stream_key(POST)]
    bus.publish([_entry(1, POST)])
    assert _ids(bus.read([OPEN, POST], 10)) == ["fmsg_0001"]


def test_redis_restarted_empty_raises_group_missing_then_recovers(private_redis: RedisProcess) -> None:
    with StreamBus(private_redis.url, "wipe", GROUP, "c1") as bus:
        bus.ensure_groups(TOPICS)
        bus.publish([_entry(1, OPEN)])
        assert len(bus.read(TOPICS, 10)) == 1

        private_redis.restart(wipe_data=True)

        with pytest.raises(GroupMissing) as caught:
            bus.read(TOPICS, 10, block_ms=100)
        assert caught.value.streams[0] in {bus.stream_key(t) for t in TOPICS}
        bus.forget_groups()
        assert bus.ensure_groups(TOPICS) == [bus.stream_key(t) for t in TOPICS]
        bus.publish([_entry(2, EVENTS)])  # what reconcile would re-publish
        assert _ids(bus.read(TOPICS, 10, block_ms=100)) == ["fmsg_0002"]


# -- Redis unavailable ---------------------------------------------------------------------


def test_stopped_redis_is_reported_fast_and_recovered(private_redis: RedisProcess) -> None:
    with StreamBus(private_redis.url, "down", GROUP, "c1") as bus:
        bus.ensure_groups([OPEN])
        bus.publish([_entry(1)])
        pending = bus.read([OPEN], 10)

        private_redis.stop()

        error = _fails_fast(bus.ping)
        message = str(error)
        assert message.startswith(f"redis at {private_redis.url} is unavailable: ")
        assert "\n" not in message and error.reason
        _fails_fast(lambda: bus.publish([_entry(2)]))
        _fails_fast(lambda: bus.read([OPEN], 10, block_ms=1000))
        _fails_fast(lambda: bus.ack(pending))
        _fails_fast(lambda: bus.reclaim([OPEN], 0, 10))
        _fails_fast(lambda: bus.pending_count([OPEN]))
        _fails_fast(lambda: bus.trim_acknowledged([OPEN]))
        _fails_fast(lambda: bus.describe_topics([OPEN]))
        bus.forget_groups()
        _fails_fast(lambda: bus.ensure_groups([OPEN]))

        private_redis.start()  # appendonly: the stream and group come back

        bus.ping()
        assert bus.ack(pending) == 1
        bus.publish([_entry(3)])
        assert _ids(bus.read([OPEN], 10, block_ms=100)) == ["fmsg_0003"]


def test_killed_redis_is_reported_fast(private_redis: RedisProcess) -> None:
    with StreamBus(private_redis.url, "crash", GROUP, "c1") as bus:
        bus.ensure_groups([OPEN])
        private_redis.kill()
        _fails_fast(lambda: bus.publish([_entry(1)]))
        _fails_fast(lambda: bus.read([OPEN], 10, block_ms=1000))
        private_redis.start()  # start() returns once PING answers
        assert len(bus.publish([_entry(2)])) == 1


def test_blocked_read_fails_fast_when_redis_stops(private_redis: RedisProcess) -> None:
    with StreamBus(private_redis.url, "blk", GROUP, "c1") as bus, \
            redis.Redis.from_url(private_redis.url) as raw:
        bus.ensure_groups([OPEN])
        thread, outcome = _in_thread(lambda: bus.read([OPEN], 10, block_ms=5000))
        wait_until(lambda: _blocked_reader(raw, "blk:c1:read"))
        private_redis.stop()
        thread.join(timeout=10)
        assert isinstance(outcome.get("error"), BusUnavailable), outcome
        assert outcome["elapsed"] < 4.0  # the stop ended it, not the 5 s block


def test_no_server_at_url_and_password_not_leaked() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_tcp_port()}/0"
    with StreamBus(url, "none", GROUP, "c1") as bus:
        error = _fails_fast(bus.ping)
    assert "hunter2" not in str(error) and ":***@" in str(error)


# -- trimming ------------------------------------------------------------------------------


def _stream_ids(client: redis.Redis, key: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in client.xrange(key)]


def test_trim_keeps_pending_and_undelivered_entries(make_bus: BusFactory, raw: redis.Redis) -> None:
    bus = make_bus()
    bus.ensure_groups([OPEN])
    ids = bus.publish([_entry(n) for n in range(1, 7)])
    key = bus.stream_key(OPEN)
    delivered = bus.read([OPEN], count=4)  # 1-4 delivered, 5-6 never read
    assert bus.trim_acknowledged([OPEN]) == 0  # nothing acked yet

    bus.ack([delivered[0], delivered[1], delivered[3]])  # 3 stays pending
    assert bus.trim_acknowledged([OPEN]) == 2
    assert _stream_ids(raw, key) == ids[2:]  # from the pending entry on

    bus.ack([delivered[2]])
    assert bus.trim_acknowledged([OPEN]) == 2
    assert _stream_ids(raw, key) == ids[4:]  # undelivered 5 and 6 stay
    assert bus.trim_acknowledged([OPEN]) == 0

    rest = bus.read([OPEN], count=10)
    bus.ack(rest)
    assert bus.trim_acknowledged([OPEN]) == 2
    assert raw.xlen(key) == 0
    # The stream (and its group) survive trimming to empty; new entries flow as before.
    bus.publish([_entry(9)])
    assert _ids(bus.read([OPEN], 10)) == ["fmsg_0009"]


def test_trim_waits_for_every_group(make_bus: BusFactory, raw: redis.Redis) -> None:
    ours = make_bus("c1")
    audit = make_bus("a1", group="audit")
    ours.ensure_groups([OPEN])
    audit.ensure_groups([OPEN])
    ours.publish([_entry(n) for n in range(1, 4)])
    ours.ack(ours.read([OPEN], 10))
    assert ours.trim_acknowledged([OPEN]) == 0  # the audit group has read nothing
    audit_read = audit.read([OPEN], 2)
    assert ours.trim_acknowledged([OPEN]) == 0  # read but not acked
    audit.ack(audit_read[:1])
    assert ours.trim_acknowledged([OPEN]) == 1
    assert raw.xlen(ours.stream_key(OPEN)) == 2


def test_trim_leaves_streams_without_our_group_alone(make_bus: BusFactory, raw: redis.Redis) -> None:
    ours = make_bus("c1")
    other = make_bus("o1", group="other")
    other.ensure_groups([OPEN])
    other.publish([_entry(1), _entry(2)])
    other.ack(other.read([OPEN], 10))
    # Our group does not exist yet: it will be created from 0 and must find both entries.
    assert ours.trim_acknowledged([OPEN, POST]) == 0
    assert raw.xlen(ours.stream_key(OPEN)) == 2
    ours.ensure_groups([OPEN])
    assert _ids(ours.read([OPEN], 10)) == ["fmsg_0001", "fmsg_0002"]


# -- describe_topics -----------------------------------------------------------------------


def test_describe_topics_for_missing_and_existing_streams(
    make_bus: BusFactory, raw: redis.Redis, redis_namespace: str
) -> None:
    bus = make_bus()
    missing, = bus.describe_topics([OPEN])
    assert missing == TopicInfo(
        topic=OPEN, stream=f"{redis_namespace}.{OPEN}", stream_exists=False, stream_length=0,
        last_generated_id=None, consumer_group_present=False, consumer_group_pending=0,
        consumer_group_lag=None,
    )

    ids = bus.publish([_entry(1, POST), _entry(2, POST), _entry(3, POST)])
    no_group, = bus.describe_topics([POST])
    assert (no_group.stream_exists, no_group.stream_length, no_group.last_generated_id) == (
        True, 3, ids[-1]
    )
    assert (no_group.consumer_group_present, no_group.consumer_group_pending) == (False, 0)

    bus.ensure_groups([POST])
    bus.read([POST], count=1)
    info, = bus.describe_topics([POST])
    assert (info.consumer_group_present, info.consumer_group_pending, info.consumer_group_lag) == (
        True, 1, 2
    )
    # The printed key is the one XINFO takes.
    assert raw.xinfo_stream(info.stream)["length"] == 3
    assert set(json.loads(msgspec.json.encode(info))) == {
        "topic", "stream", "stream_exists", "stream_length", "last_generated_id",
        "consumer_group_present", "consumer_group_pending", "consumer_group_lag",
    }


def test_describe_topics_rejects_a_key_that_is_not_a_stream(make_bus: BusFactory, raw: redis.Redis) -> None:
    bus = make_bus()
    raw.set(bus.stream_key(OPEN), "oops")
    with pytest.raises(TransportError, match="not a stream"):
        bus.describe_topics([OPEN])


# -- unix socket ---------------------------------------------------------------------------


def test_unix_socket_url(short_tmp: Path) -> None:
    with RedisProcess(short_tmp / "data", unix_socket=short_tmp / "r.sock", appendonly=False) as server:
        assert server.url.startswith("unix://")
        with StreamBus(server.url, "unix", GROUP, "c1") as bus:
            bus.ping()
            bus.ensure_groups([OPEN])
            bus.publish([_entry(1)])
            entries = bus.read([OPEN], 10, block_ms=100)
            assert _ids(entries) == ["fmsg_0001"]
            assert bus.ack(entries) == 1
        with NamespaceClaim(server.url, "unix", short_tmp / "a.db") as claim:
            assert claim.claim().db_path == str((short_tmp / "a.db").resolve())
            assert claim.release()


# -- namespace claim -----------------------------------------------------------------------


@pytest.fixture
def claims(redis_url: str, redis_namespace: str) -> Iterator[Callable[..., NamespaceClaim]]:
    made: list[NamespaceClaim] = []

    def make(db: str | Path, **kwargs: Any) -> NamespaceClaim:
        claim = NamespaceClaim(redis_url, redis_namespace, db, **kwargs)
        made.append(claim)
        return claim

    yield make
    for claim in made:
        claim.close()


def test_claim_refresh_release(claims: Callable[..., NamespaceClaim], raw: redis.Redis,
                               redis_namespace: str, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    claim = claims("relative/metawsm.db", ttl=15.0)
    record = claim.claim()
    key = f"{redis_namespace}:owner"
    stored = json.loads(raw.get(key))
    assert set(stored) == {"db_path", "pid", "host", "claimed_at"}
    assert stored["db_path"] == str(tmp_path / "relative" / "metawsm.db") == record.db_path
    assert 0 < raw.pttl(key) <= 15_000
    assert claim.current_owner() == record
    assert claim.claim() == record  # idempotent

    raw.pexpire(key, 500)
    assert claim.refresh() is False
    assert raw.pttl(key) > 1_000  # extended back to the full TTL

    raw.delete(key)  # Redis lost it (restart without data): refresh puts it back
    assert claim.refresh() is True
    assert json.loads(raw.get(key)) == stored

    assert claim.release() is True
    assert raw.exists(key) == 0
    assert claim.release() is False


def test_other_database_is_refused_with_a_clear_message(
    claims: Callable[..., NamespaceClaim], redis_namespace: str, tmp_path: Path
) -> None:
    first = claims(tmp_path / "a.db", pid=111)
    second = claims(tmp_path / "b.db", pid=222)
    first.claim()
    with pytest.raises(NamespaceTaken) as caught:
        second.claim()
    assert str(caught.value) == (
        f'forum redis stream namespace "{redis_namespace}" is in use by another metawsm serve '
        f"(db {tmp_path / 'a.db'}, pid 111); use a different forum.redis.stream or stop that daemon"
    )
    assert caught.value.owner is not None and caught.value.owner.pid == 111
    assert second.release() is False  # never held: must not delete the other's claim
    assert first.current_owner() is not None
    assert first.release() is True
    second.claim()  # free now


def test_expired_claim_can_be_taken_by_another_database(
    claims: Callable[..., NamespaceClaim], tmp_path: Path
) -> None:
    stalled = claims(tmp_path / "a.db", ttl=0.2)
    newcomer = claims(tmp_path / "b.db")
    stalled.claim()
    with pytest.raises(NamespaceTaken):
        newcomer.claim()

    def try_claim() -> OwnerRecord | None:
        try:
            return newcomer.claim()
        except NamespaceTaken:
            return None

    record = wait_until(try_claim, timeout=5.0, message="claim never expired")
    assert record.db_path == str((tmp_path / "b.db").resolve())
    with pytest.raises(NamespaceTaken, match="b.db"):
        stalled.refresh()  # woke up to find the namespace taken
    assert stalled.release() is False
    assert newcomer.current_owner() == record


def test_restarted_daemon_on_same_database_takes_over(
    claims: Callable[..., NamespaceClaim], tmp_path: Path
) -> None:
    old = claims(tmp_path / "same.db", pid=100)
    new = claims(tmp_path / "same.db", pid=200, holds_database_lock=True)  # the lock proves old is dead
    old.claim()
    record = new.claim()
    assert record.pid == 200
    assert new.current_owner() == record
    with pytest.raises(NamespaceTaken, match="pid 200"):
        old.refresh()
    assert old.lost is not None
    with pytest.raises(NamespaceTaken, match="pid 200"):
        old.refresh()  # lost for good: the same error every time, never "refresh() before claim()"
    assert old.release() is False  # must not delete the new daemon's claim
    assert new.current_owner() == record


def test_the_same_database_cannot_take_over_without_its_lock_nor_from_another_host(
    claims: Callable[..., NamespaceClaim], tmp_path: Path
) -> None:
    live = claims(tmp_path / "same.db", pid=100, holds_database_lock=True)
    intruder = claims(tmp_path / "same.db", pid=200)  # same database, lock not held
    elsewhere = claims(tmp_path / "same.db", pid=300, host="another-host", holds_database_lock=True)
    record = live.claim()
    for contender in (intruder, elsewhere):
        with pytest.raises(NamespaceTaken, match="pid 100"):
            contender.claim()
    assert live.refresh() is False and live.lost is None
    assert live.current_owner() == record


def test_concurrent_claims_have_one_winner(claims: Callable[..., NamespaceClaim], tmp_path: Path) -> None:
    contenders = [claims(tmp_path / f"db{n}.db", pid=n) for n in range(8)]
    barrier = threading.Barrier(len(contenders))
    results: list[str] = []
    lock = threading.Lock()

    def run(claim: NamespaceClaim) -> None:
        barrier.wait(timeout=10)
        try:
            claim.claim()
            outcome = "won"
        except NamespaceTaken:
            outcome = "taken"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run, args=(c,)) for c in contenders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == ["taken"] * 7 + ["won"]


def test_claim_reports_unavailable_redis_fast(private_redis: RedisProcess, tmp_path: Path) -> None:
    with NamespaceClaim(private_redis.url, "ns", tmp_path / "a.db") as claim:
        claim.claim()
        private_redis.stop()
        _fails_fast(claim.refresh)
        _fails_fast(claim.claim)
        private_redis.start()
        assert claim.refresh() is False  # appendonly kept the key
