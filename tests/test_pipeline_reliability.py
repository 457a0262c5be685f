"""The pipeline's delivery guarantees, with real Redis failures.

* a stream entry delivered twice changes nothing (commands and events);
* Redis stopped mid-flow: writes are accepted (202), stay pending in the outbox, and apply
  exactly once when Redis is back;
* Redis restarted empty with a backlog: groups are recreated, reconcile republishes, every
  projection catches up, nothing is duplicated;
* a poison entry is parked after ``forum.max_attempts`` attempts, acked, and replayable, while
  the pipeline keeps flowing;
* a projection rebuild while writes continue ends equal to a from-scratch fold of the log.

The helpers at the top (``Writer``, ``check_consistent``, ...) are shared with
``test_pipeline_faults.py``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from metawsm.actors.errors import ActorError, Refusal
from metawsm.actors.forum.messages import INTAKE, RELAY, Rebuild, ReplayParked, projection_path
from metawsm.forum.errors import ForumError
from metawsm.forum.messages import (
    AddPost,
    CommandMessage,
    EventMessage,
    PostAdded,
    decode_bus_message,
    encode,
)
from metawsm.forum.projections.registry import PROJECTION_NAMES, create_projection
from metawsm.forum.projections.thread_views import search_row_count, search_tokens
from metawsm.forum.requests import AddPostRequest, ChangeStateRequest, OpenThreadRequest
from metawsm.forum.write_model import EVENT_COLUMNS, event_from_row
from metawsm.store.schema_forum import PROJECTION_TABLES
from metawsm.waiting import wait_until
from support.daemon import InProcessDaemon, make_policy

# -- shared helpers ---------------------------------------------------------------------------


def connect(daemon: Any) -> sqlite3.Connection:
    conn = sqlite3.connect(str(daemon.services.db.path), timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


def scalar(daemon: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    conn = connect(daemon)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


class Writer:
    """Writes from several threads; remembers exactly which writes were acknowledged.

    Every write carries a unique body, so "present exactly once" is a count in ``forum_posts``.
    A write refused because an actor was restarting is not acknowledged and is retried as a
    new write (with a new body).  ``wait`` is the read-your-writes budget per write.
    """

    def __init__(self, forum: Any, wait: float = 2.0, tag: str = "w") -> None:
        self.forum = forum
        self.wait = wait
        self.tag = tag
        self.lock = threading.Lock()
        self.acked: dict[str, str] = {}  # body -> status (applied | accepted)
        self.threads: list[str] = []
        self.unavailable = 0
        self.errors: list[BaseException] = []
        self.runs = 0

    def open(self, label: str) -> str | None:
        body = f"{self.tag}-{label}-open"
        result = self._submit(OpenThreadRequest(ticket="T-load", title=f"load {label}", body=body, actor_type="agent"), "", body)
        if result is not None:
            with self.lock:
                self.threads.append(result.thread_id)
            return result.thread_id
        return None

    def post(self, thread_id: str, label: str) -> bool:
        body = f"{self.tag}-{label}"
        return self._submit(AddPostRequest(body=body, actor_type="human"), thread_id, body) is not None

    def _submit(self, request: Any, thread_id: str, body: str) -> Any:
        try:
            result = self.forum.submit_sync(request, thread_id=thread_id, wait=self.wait)
        except (ActorError, Refusal) as error:
            if isinstance(error, ForumError):
                with self.lock:
                    self.errors.append(error)
                return None
            with self.lock:
                self.unavailable += 1
            # Restarting: retry once the intake is bound again (a condition, not a sleep).
            wait_until(lambda: self.forum.system.directory.get(INTAKE) is not None, timeout=10)
            return None
        with self.lock:
            self.acked[body] = result.status
        return result

    def run(self, writers: int, per_writer: int, between: Callable[[int], None] | None = None) -> None:
        """``writers`` threads, each opening a thread then posting to it (``per_writer`` writes)."""
        with self.lock:
            self.runs += 1
            run = self.runs

        def work(w: int) -> None:
            tid = None
            i = 0
            attempts = 0
            while i < per_writer and attempts < per_writer * 20:
                attempts += 1
                label = f"r{run}-{w}-{i}-{attempts}"
                if tid is None:
                    tid = self.open(label)
                    ok = tid is not None
                else:
                    ok = self.post(tid, label)
                if ok:
                    i += 1
                    if between is not None:
                        between(i)

        threads = [threading.Thread(target=work, args=(w,), name=f"writer-{w}") for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a writer thread hung"


def check_consistent(daemon: Any) -> str | None:
    """None when the pipeline is drained and every invariant holds, else what is off."""
    conn = connect(daemon)
    try:
        events, last = conn.execute("SELECT COUNT(*), COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()
        if events != last:
            return f"forum_events has gaps: {events} rows, max sequence {last}"
        pending = conn.execute("SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'").fetchone()[0]
        if pending:
            return f"{pending} outbox row(s) still pending"
        undecided = conn.execute(
            "SELECT COUNT(*) FROM forum_outbox o WHERE topic LIKE 'forum.commands.%' AND status != 'parked'"
            " AND NOT EXISTS (SELECT 1 FROM forum_command_results r"
            " WHERE r.event_id = json_extract(o.payload_json, '$.envelope.event_id'))"
        ).fetchone()[0]
        if undecided:
            return f"{undecided} command(s) without a verdict"
        applied = dict(conn.execute("SELECT projection_name, COUNT(*) FROM forum_projection_events GROUP BY 1").fetchall())
        checkpoints = dict(conn.execute("SELECT projection_name, last_sequence FROM forum_projection_checkpoints").fetchall())
        for name in PROJECTION_NAMES:
            if applied.get(name, 0) != events or checkpoints.get(name, 0) != last:
                return f"{name}: applied {applied.get(name, 0)}, checkpoint {checkpoints.get(name, 0)}, events {events}"
        stray = conn.execute(
            "SELECT COUNT(*) FROM forum_projection_events p WHERE NOT EXISTS"
            " (SELECT 1 FROM forum_events e WHERE e.event_id = p.event_id)"
        ).fetchone()[0]
        if stray:
            return f"{stray} ledger row(s) for events that are not in the log"
        views = conn.execute(
            "SELECT v.thread_id, v.posts_count, (SELECT COUNT(*) FROM forum_posts p WHERE p.thread_id = v.thread_id),"
            " v.state, t.state, v.priority, t.priority, v.last_event_sequence, t.version"
            " FROM forum_thread_views v JOIN forum_threads t USING (thread_id)"
        ).fetchall()
        threads = conn.execute("SELECT COUNT(*) FROM forum_threads").fetchone()[0]
        if len(views) != threads:
            return f"{len(views)} thread views for {threads} threads"
        for row in views:
            if row[1] != row[2] or row[3] != row[4] or row[5] != row[6] or row[7] != row[8]:
                return f"thread view {tuple(row)} disagrees with the write model"
        stats = sorted(tuple(r) for r in conn.execute(
            "SELECT ticket, run_id, state, priority, thread_count FROM forum_thread_stats"))
        recount = sorted(tuple(r) for r in conn.execute(
            "SELECT ticket, run_id, state, priority, COUNT(*) FROM forum_threads GROUP BY 1, 2, 3, 4"))
        if stats != recount:
            return f"stats {stats} != recount {recount}"
        queue = conn.execute("SELECT COUNT(*) FROM forum_thread_queue_view").fetchone()[0]
        if queue != threads:
            return f"{queue} queue rows for {threads} threads"
        search = search_row_count(conn)  # contentless FTS5 (migration 13): cannot be scanned
        posts = conn.execute("SELECT COUNT(*) FROM forum_posts").fetchone()[0]
        if search != posts:
            return f"{search} search rows for {posts} posts"
        return None
    finally:
        conn.close()


def wait_consistent(daemon: Any, timeout: float = 10.0) -> None:
    last: list[str | None] = [None]

    def ok() -> bool:
        last[0] = check_consistent(daemon)
        return last[0] is None

    try:
        wait_until(ok, timeout=timeout, interval=0.02)
    except TimeoutError:
        raise AssertionError(f"pipeline not consistent after {timeout}s: {last[0]}") from None


def assert_exactly_once(daemon: Any, writer: Writer) -> None:
    """Every acknowledged write is in forum_posts exactly once; nothing appears twice."""
    conn = connect(daemon)
    try:
        counts = dict(conn.execute("SELECT body, COUNT(*) FROM forum_posts GROUP BY body").fetchall())
    finally:
        conn.close()
    missing = [body for body in writer.acked if counts.get(body, 0) != 1]
    assert not missing, f"acknowledged writes not present exactly once: {missing[:5]} ({len(missing)})"
    twice = {body: n for body, n in counts.items() if n > 1}
    assert not twice, f"duplicated posts: {twice}"
    assert not writer.errors, writer.errors[:3]


def table_dump(conn: sqlite3.Connection, projection: str) -> dict[str, list[tuple[Any, ...]]]:
    dump = {}
    for table in PROJECTION_TABLES[projection]:
        if table == "forum_search":  # contentless FTS5 (migration 13): what it indexed, by rowid
            dump[table] = [(search_row_count(conn),), *sorted(search_tokens(conn).items())]
            continue
        rows = conn.execute(f"SELECT * FROM {table}").fetchall()
        dump[table] = sorted((tuple(r) for r in rows), key=repr)
    dump["checkpoint"] = [tuple(r) for r in conn.execute(
        "SELECT last_sequence FROM forum_projection_checkpoints WHERE projection_name = ?", (projection,))]
    dump["ledger"] = sorted(r[0] for r in conn.execute(
        "SELECT event_id FROM forum_projection_events WHERE projection_name = ?", (projection,)))
    return dump


def fold_from_scratch(source: Path, target: Path) -> sqlite3.Connection:
    """A twin database: the source's log folded into freshly cleared projections, offline."""
    src = sqlite3.connect(str(source))
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
    finally:
        src.close()
    dst.isolation_level = None
    dst.execute("BEGIN")
    events = [event_from_row(r) for r in dst.execute(f"SELECT {EVENT_COLUMNS} FROM forum_events ORDER BY sequence")]
    for name in PROJECTION_NAMES:
        projection = create_projection(name)
        projection.clear(dst)
        dst.execute("DELETE FROM forum_projection_events WHERE projection_name = ?", (name,))
        for event in events:
            projection.apply(dst, event)
            dst.execute("INSERT INTO forum_projection_events VALUES (?, ?, '')", (name, event.envelope.event_id))
        dst.execute("UPDATE forum_projection_checkpoints SET last_sequence = ? WHERE projection_name = ?",
                    (events[-1].sequence if events else 0, name))
    dst.execute("COMMIT")
    return dst


def stream_key(daemon: Any, topic: str) -> str:
    return f"{daemon.services.policy.forum.redis.stream}.{topic}"


def group_done_with(client: redis.Redis, key: str, group: str, entry_id: str) -> bool:
    """True once ``group`` read ``entry_id`` (or later) on ``key`` and has nothing pending."""
    for info in client.xinfo_groups(key):
        if info["name"].decode() == group:
            last = info["last-delivered-id"].decode()
            return _id(last) >= _id(entry_id) and info["pending"] == 0
    return False


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def private_daemon(private_redis: Any, tmp_path: Path, **forum: Any) -> InProcessDaemon:
    return InProcessDaemon(make_policy(private_redis.url, "mw", **forum), tmp_path / "metawsm.db")


@pytest.fixture
def daemon_on_private_redis(private_redis, tmp_path):
    daemon = private_daemon(private_redis, tmp_path)
    try:
        yield daemon
    finally:
        daemon.stop()


# -- idempotency ------------------------------------------------------------------------------


def test_the_same_stream_entry_delivered_twice_changes_nothing(forum_daemon, redis_url):
    forum = forum_daemon.forum
    opened = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b", actor_type="agent"))
    forum.submit_sync(AddPostRequest(body="second"), thread_id=opened.thread_id)
    forum.submit_sync(ChangeStateRequest(to_state="triaged"), thread_id=opened.thread_id)
    wait_consistent(forum_daemon)
    before = {
        "events": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_events"),
        "posts": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_posts"),
        "ledger": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_projection_events"),
        "results": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_command_results"),
        "posts_count": scalar(forum_daemon, "SELECT posts_count FROM forum_thread_views"),
        "stats": scalar(forum_daemon, "SELECT group_concat(state || thread_count) FROM forum_thread_stats"),
    }
    group = forum_daemon.services.policy.forum.redis.group
    client = redis.Redis.from_url(redis_url)
    try:
        again = []
        for topic in ("forum.commands.add_post", "forum.commands.open_thread", "forum.events.post.added",
                      "forum.events.state.changed"):
            key = stream_key(forum_daemon, topic)
            (_, fields), = client.xrange(key, count=1)
            for _ in range(2):
                again.append((key, client.xadd(key, fields).decode()))
        wait_until(lambda: all(group_done_with(client, k, group, e) for k, e in again), timeout=5,
                   message="the consumer acks the re-published entries")
    finally:
        client.close()
    wait_consistent(forum_daemon)
    after = {
        "events": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_events"),
        "posts": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_posts"),
        "ledger": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_projection_events"),
        "results": scalar(forum_daemon, "SELECT COUNT(*) FROM forum_command_results"),
        "posts_count": scalar(forum_daemon, "SELECT posts_count FROM forum_thread_views"),
        "stats": scalar(forum_daemon, "SELECT group_concat(state || thread_count) FROM forum_thread_stats"),
    }
    assert after == before
    assert scalar(forum_daemon, "SELECT COUNT(*) FROM forum_parked_messages") == 0


def test_a_stale_event_replayed_after_later_ones_changes_nothing(forum_daemon, redis_url):
    """An old event arriving after newer ones (a late redelivery) must not roll a view back."""
    forum = forum_daemon.forum
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b")).thread_id
    forum.submit_sync(ChangeStateRequest(to_state="triaged"), thread_id=tid)
    forum.submit_sync(ChangeStateRequest(to_state="answered"), thread_id=tid)
    wait_consistent(forum_daemon)
    group = forum_daemon.services.policy.forum.redis.group
    client = redis.Redis.from_url(redis_url)
    try:
        key = stream_key(forum_daemon, "forum.events.state.changed")
        (_, fields), _later = client.xrange(key)
        entry = client.xadd(key, fields).decode()
        wait_until(lambda: group_done_with(client, key, group, entry), timeout=5)
    finally:
        client.close()
    wait_consistent(forum_daemon)
    assert scalar(forum_daemon, "SELECT state FROM forum_thread_views") == "answered"
    assert scalar(forum_daemon, "SELECT state FROM forum_thread_queue_view") == "answered"


# -- Redis down -------------------------------------------------------------------------------


def test_writes_are_accepted_while_redis_is_down_and_apply_once_when_it_returns(daemon_on_private_redis, private_redis):
    daemon = daemon_on_private_redis
    forum = daemon.forum
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="before")).thread_id
    wait_consistent(daemon)
    events_before = scalar(daemon, "SELECT COUNT(*) FROM forum_events")

    private_redis.stop()
    accepted = []
    for i in range(5):
        result = forum.submit_sync(AddPostRequest(body=f"while-down-{i}"), thread_id=tid, wait=0.2)
        assert result.status == "accepted" and result.thread is None
        assert result.event_id.startswith("fevt_") and result.thread_id == tid
        accepted.append(result.event_id)
    opened = forum.submit_sync(OpenThreadRequest(ticket="T", title="new", body="opened-while-down"), wait=0.2)
    assert opened.status == "accepted"
    # A post to a thread whose open is still pending is accepted too (it will apply after it).
    follow = forum.submit_sync(AddPostRequest(body="follow-up-while-down"), thread_id=opened.thread_id, wait=0.2)
    assert follow.status == "accepted"

    # Durable in the outbox, nothing applied, nothing lost.
    assert scalar(daemon, "SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'") == 7
    assert scalar(daemon, "SELECT COUNT(*) FROM forum_events") == events_before
    wait_until(lambda: not daemon.services.bus.healthy, timeout=5, message="the bus reports itself unhealthy")

    private_redis.start()
    wait_consistent(daemon, timeout=15)
    assert daemon.services.bus.healthy
    conn = connect(daemon)
    try:
        bodies = [r[0] for r in conn.execute("SELECT body FROM forum_posts ORDER BY created_at")]
        assert bodies == ["before"] + [f"while-down-{i}" for i in range(5)] + ["opened-while-down", "follow-up-while-down"]
        results = dict(conn.execute("SELECT event_id, status FROM forum_command_results").fetchall())
        assert all(results[e] == "applied" for e in accepted)
        assert results[follow.event_id] == "applied"
    finally:
        conn.close()
    # The waiter-less writes are visible to ordinary reads, and new writes are synchronous again.
    assert forum.read(lambda r: r.get_thread(tid)).posts_count == 6
    assert forum.submit_sync(AddPostRequest(body="after"), thread_id=tid).status == "applied"


def test_redis_restarted_empty_with_a_backlog(daemon_on_private_redis, private_redis):
    daemon = daemon_on_private_redis
    forum = daemon.forum
    writer = Writer(forum, wait=2.0, tag="wipe")
    writer.run(writers=2, per_writer=10)
    wait_consistent(daemon)
    tids = list(writer.threads)
    quick = Writer(forum, wait=0.0, tag="quick")  # fire and forget: 202s, no waiting

    # Backlog 1: rows accepted while Redis is down (pending in the outbox).
    private_redis.stop()
    for i in range(6):
        assert quick.post(tids[i % len(tids)], f"down-{i}")
    assert scalar(daemon, "SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'") == 6
    assert set(quick.acked.values()) == {"accepted"}

    # Backlog 2: Redis comes back, the relay publishes, and Redis dies (SIGKILL) with whatever
    # it held -- published, half-consumed, unacked -- then restarts with no data at all.
    private_redis.start()
    for i in range(30):
        assert quick.post(tids[i % len(tids)], f"burst-{i}")
    private_redis.kill()
    for i in range(4):
        assert quick.post(tids[i % len(tids)], f"dead-{i}")
    private_redis.restart(wipe_data=True)
    wait_consistent(daemon, timeout=10)

    # Backlog 3: the same with a healthy pipeline mid-burst (commands decided, events published
    # but not yet projected, entries pending in the group...), whatever the kill catches.
    for i in range(40):
        assert quick.post(tids[i % len(tids)], f"live-{i}")
    private_redis.kill()
    private_redis.restart(wipe_data=True)

    wait_consistent(daemon, timeout=10)
    assert_exactly_once(daemon, writer)
    assert_exactly_once(daemon, quick)
    client = redis.Redis.from_url(private_redis.url)
    try:
        group = daemon.services.policy.forum.redis.group
        groups = client.xinfo_groups(stream_key(daemon, "forum.commands.add_post"))
        assert [g["name"].decode() for g in groups] == [group]
    finally:
        client.close()
    # and the pipeline serves synchronous writes again
    assert forum.submit_sync(AddPostRequest(body="after-wipe"), thread_id=tids[0]).status == "applied"
    wait_consistent(daemon)


# -- poison entries ---------------------------------------------------------------------------


def parked(daemon: Any) -> list[sqlite3.Row]:
    conn = connect(daemon)
    try:
        return conn.execute("SELECT * FROM forum_parked_messages ORDER BY parked_at").fetchall()
    finally:
        conn.close()


def test_undecodable_entry_is_parked_acked_and_the_pipeline_keeps_flowing(forum_daemon, redis_url):
    forum = forum_daemon.forum
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b")).thread_id
    key = stream_key(forum_daemon, "forum.commands.add_post")
    group = forum_daemon.services.policy.forum.redis.group
    client = redis.Redis.from_url(redis_url)
    try:
        entry = client.xadd(key, {"message_id": "fmsg_garbage", "topic": "forum.commands.add_post",
                                  "message_key": tid, "payload": b"{not json"}).decode()
        wait_until(lambda: len(parked(forum_daemon)) == 1, timeout=5)
        wait_until(lambda: group_done_with(client, key, group, entry), timeout=5, message="the entry is acked")
    finally:
        client.close()
    row = parked(forum_daemon)[0]
    assert row["message_id"] == "fmsg_garbage" and row["stream_entry_id"] == entry
    assert "undecodable" in row["last_error"] and row["topic"] == "forum.commands.add_post"
    assert forum.submit_sync(AddPostRequest(body="still flowing"), thread_id=tid).status == "applied"
    wait_consistent(forum_daemon)


def test_command_that_makes_the_handler_fail_is_parked_after_max_attempts_and_replayable(forum_daemon, redis_url):
    forum = forum_daemon.forum
    max_attempts = forum_daemon.services.policy.forum.max_attempts
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b")).thread_id
    first = forum.submit_sync(AddPostRequest(body="original"), thread_id=tid)
    post_id = scalar(forum_daemon, "SELECT post_id FROM forum_posts WHERE body = 'original'")
    key = stream_key(forum_daemon, "forum.commands.add_post")
    group = forum_daemon.services.policy.forum.redis.group
    client = redis.Redis.from_url(redis_url)
    try:
        # A realistic poison: a foreign producer re-uses a post id (UNIQUE violation in the handler).
        (_, fields), = client.xrange(key, count=1, min="-", max="+")
        message = decode_bus_message(fields[b"payload"])
        assert isinstance(message, CommandMessage) and isinstance(message.command, AddPost)
        poison = msgspec.structs.replace(
            message,
            envelope=msgspec.structs.replace(message.envelope, event_id="fevt_poison_1"),
            command=AddPost(body="duplicate id", post_id=post_id),
        )
        entry = client.xadd(key, {"message_id": "fmsg_poison_1", "topic": "forum.commands.add_post",
                                  "message_key": tid, "payload": encode(poison)}).decode()
        # Meanwhile the pipeline keeps flowing.
        assert forum.submit_sync(AddPostRequest(body="during"), thread_id=tid).status == "applied"
        wait_until(lambda: len(parked(forum_daemon)) == 1, timeout=10, message="the poison is parked")
        wait_until(lambda: group_done_with(client, key, group, entry), timeout=5, message="the poison is acked")
        row = parked(forum_daemon)[0]
        assert row["message_id"] == "fmsg_poison_1" and row["attempts"] == max_attempts
        assert "UNIQUE constraint failed" in row["last_error"] and row["replayed_at"] is None
        assert scalar(forum_daemon, "SELECT COUNT(*) FROM forum_command_results WHERE event_id = 'fevt_poison_1'") == 0

        # Replay re-publishes it; still poisonous, so it is parked again.
        length = client.xlen(key)
        answer = asyncio.run(forum.replay_parked("fmsg_poison_1"))
        assert answer == {"message_id": "fmsg_poison_1", "topic": "forum.commands.add_post", "status": "replayed"}
        assert client.xlen(key) == length + 1
        wait_until(lambda: (rows := parked(forum_daemon)) and rows[0]["stream_entry_id"] != entry
                   and rows[0]["replayed_at"] is None, timeout=10, message="the replayed poison is parked again")

        # The operator repairs the parked payload (a fresh post id) and replays it: it applies.
        repaired = msgspec.structs.replace(poison, command=AddPost(body="repaired", post_id="fpst_repaired_1"))
        conn = connect(forum_daemon)
        with conn:
            conn.execute("UPDATE forum_parked_messages SET payload_json = ? WHERE message_id = 'fmsg_poison_1'",
                         (encode(repaired).decode(),))
        conn.close()
        forum_daemon.system.ask(RELAY, ReplayParked("fmsg_poison_1"))
        wait_until(lambda: scalar(forum_daemon, "SELECT COUNT(*) FROM forum_posts WHERE body = 'repaired'") == 1,
                   timeout=5, message="the repaired message applies")
        assert parked(forum_daemon)[0]["replayed_at"] is not None
    finally:
        client.close()
    with pytest.raises(ForumError) as info:
        asyncio.run(forum.replay_parked("fmsg_nope"))
    assert info.value.status == 404
    assert first.status == "applied"
    wait_consistent(forum_daemon)


def test_event_not_in_the_log_is_parked_and_does_not_corrupt_projections(forum_daemon, redis_url):
    """A forged/foreign event on an event stream must not move any projection's checkpoint."""
    forum = forum_daemon.forum
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b")).thread_id
    forum.submit_sync(AddPostRequest(body="real"), thread_id=tid)
    wait_consistent(forum_daemon)
    key = stream_key(forum_daemon, "forum.events.post.added")
    group = forum_daemon.services.policy.forum.redis.group
    client = redis.Redis.from_url(redis_url)
    try:
        (_, fields), = client.xrange(key, count=1)
        real = decode_bus_message(fields[b"payload"])
        assert isinstance(real, EventMessage)
        forged = EventMessage(
            sequence=real.sequence + 5,
            envelope=msgspec.structs.replace(real.envelope, event_id="fevt_forged_1"),
            payload=PostAdded(post_id="fpst_forged", body="forged"),
        )
        entry = client.xadd(key, {"message_id": "fmsg_forged_1", "topic": "forum.events.post.added",
                                  "message_key": tid, "payload": encode(forged)}).decode()
        wait_until(lambda: len(parked(forum_daemon)) == 1, timeout=10, message="the forged event is parked")
        wait_until(lambda: group_done_with(client, key, group, entry), timeout=5, message="the forged event is acked")
    finally:
        client.close()
    assert "fevt_forged_1" in parked(forum_daemon)[0]["last_error"]
    # Later real events still apply everywhere (no checkpoint jumped ahead).
    for i in range(6):
        forum.submit_sync(AddPostRequest(body=f"after-{i}"), thread_id=tid)
    wait_consistent(forum_daemon)
    assert scalar(forum_daemon, "SELECT COUNT(*) FROM forum_search WHERE forum_search MATCH 'forged'") == 0
    assert forum.read(lambda r: r.get_thread(tid)).posts_count == 8


# -- rebuild ----------------------------------------------------------------------------------


def test_rebuild_while_writes_continue_equals_a_fold_from_scratch(forum_daemon, tmp_path):
    forum = forum_daemon.forum
    writer = Writer(forum, wait=3.0, tag="rb")
    writer.run(writers=2, per_writer=15)
    results: list[Any] = []

    def rebuild_now(i: int) -> None:
        if i in (3, 9):
            results.extend(asyncio.run(forum.rebuild()))

    busy = threading.Thread(target=lambda: writer.run(writers=2, per_writer=15))
    busy.start()
    # Rebuild every projection twice while the other writers keep going, once via the API
    # helper and once per projection through the actor system.
    single = Writer(forum, wait=3.0, tag="rb1")
    single.run(writers=1, per_writer=12, between=rebuild_now)
    for name in PROJECTION_NAMES:
        answer = forum_daemon.system.ask(projection_path(name), Rebuild(), timeout=30)
        assert answer.projection == name
    busy.join(timeout=60)
    wait_consistent(forum_daemon)
    assert all(r.events_replayed > 0 for r in results) and len(results) == 8
    assert_exactly_once(forum_daemon, writer)
    assert_exactly_once(forum_daemon, single)
    # No write timed out into a 202 because the rebuild swallowed its notification.
    assert set(writer.acked.values()) == {"applied"} and set(single.acked.values()) == {"applied"}

    live = connect(forum_daemon)
    twin = fold_from_scratch(forum_daemon.services.db.path, tmp_path / "twin.db")
    try:
        for name in PROJECTION_NAMES:
            assert table_dump(live, name) == table_dump(twin, name), name
    finally:
        live.close()
        twin.close()
