"""Faults under load: every pipeline actor crashed mid-stream, and writers racing on one thread.

Crashes go through the fault-injection hook (``system.crash(path)``) while three writer
threads keep writing.  Afterwards every acknowledged write (200 or 202) is present exactly
once, every projection applied every event exactly once, the read models equal a recount of
the write model, and the restart shows in the actor inspection tree.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest

from metawsm.actors.errors import ActorError
from metawsm.actors.forum.messages import (
    BROKER,
    CONSUMER,
    FORUM,
    HANDLER,
    INTAKE,
    PROJECTIONS,
    RELAY,
    projection_path,
)
from metawsm.forum.enums import ThreadState
from metawsm.forum.errors import ForumError
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.forum.requests import (
    AddPostRequest,
    AnswerRequest,
    ChangeStateRequest,
    CloseRequest,
    OpenThreadRequest,
    SetPriorityRequest,
)
from metawsm.forum.rules import transition_allowed
from metawsm.waiting import wait_until
from test_pipeline_reliability import Writer, assert_exactly_once, connect, wait_consistent

CRASH_PATHS = [INTAKE, RELAY, CONSUMER, HANDLER, *[projection_path(n) for n in PROJECTION_NAMES], BROKER, PROJECTIONS, FORUM]


@pytest.mark.parametrize("path", CRASH_PATHS, ids=lambda p: p.removeprefix("root/forum/").replace("root/", ""))
def test_actor_crash_under_load_loses_and_duplicates_nothing(forum_daemon, path):
    system = forum_daemon.system
    writer = Writer(forum_daemon.forum, wait=3.0, tag="crash")
    crashes = []

    def crash_twice() -> None:
        for threshold in (50, 130):
            wait_until(lambda: len(writer.acked) >= threshold, timeout=20)
            system.crash(path, reason=f"test crash at {threshold}")
            crashes.append(threshold)

    crasher = threading.Thread(target=crash_twice, name="crasher")
    crasher.start()
    writer.run(writers=3, per_writer=70)  # 210 acknowledged writes
    crasher.join(timeout=30)
    assert crashes == [50, 130]
    assert len(writer.acked) == 210

    wait_consistent(forum_daemon, timeout=10)
    assert_exactly_once(forum_daemon, writer)

    def restarted() -> Any:
        node = system.inspect().find(path)
        return node is not None and node.restarts >= 2 and node.state == "running" and node
    node = wait_until(restarted, timeout=5, message=f"{path} shows two restarts and runs again")
    assert node.last_failure is not None and node.last_failure.type == "InjectedFault"
    assert system.summary()["restarts_total"] >= 2
    # Nobody waited out a budget because the crash swallowed a notification.
    statuses = list(writer.acked.values())
    assert statuses.count("accepted") == 0, f"{statuses.count('accepted')} writes fell back to 202"
    # and the pipeline still answers synchronously afterwards
    tid = writer.threads[0]
    assert forum_daemon.forum.submit_sync(AddPostRequest(body="after-crash"), thread_id=tid).status == "applied"


def test_intake_crash_fails_pending_callers_fast_and_commits_nothing_half_way(forum_daemon):
    """A caller whose submit raced the crash gets an error, never a silent loss: if it was told
    'accepted' the write exists, otherwise it does not."""
    forum = forum_daemon.forum
    tid = forum.submit_sync(OpenThreadRequest(ticket="T", title="t", body="b")).thread_id
    outcomes: dict[str, str] = {}
    lock = threading.Lock()

    def write(i: int) -> None:
        body = f"race-{i}"
        try:
            result = forum.submit_sync(AddPostRequest(body=body), thread_id=tid, wait=3.0)
            status = result.status
        except ActorError as error:
            status = f"error:{type(error).__name__}"
        except ForumError as error:
            status = f"refused:{error.code}"
        with lock:
            outcomes[body] = status

    threads = [threading.Thread(target=write, args=(i,)) for i in range(60)]
    for i, t in enumerate(threads):
        t.start()
        if i == 30:
            forum_daemon.system.crash(INTAKE)
    for t in threads:
        t.join(timeout=30)
    wait_consistent(forum_daemon)
    conn = connect(forum_daemon)
    try:
        present = {r[0] for r in conn.execute("SELECT body FROM forum_posts WHERE body LIKE 'race-%'")}
    finally:
        conn.close()
    acked = {body for body, status in outcomes.items() if status in ("applied", "accepted")}
    assert acked <= present
    assert len(outcomes) == 60


# -- concurrent writers and the state machine -------------------------------------------------


def test_concurrent_writers_respect_the_state_machine(forum_daemon):
    forum = forum_daemon.forum
    tids = [forum.submit_sync(OpenThreadRequest(ticket="T-race", title=f"race {i}", body=f"open-{i}")).thread_id
            for i in range(6)]
    states = [s.value for s in ThreadState]
    lock = threading.Lock()
    applied_posts: set[str] = set()
    refused_posts: set[str] = set()
    refusals: list[str] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        for i in range(45):
            tid = rng.choice(tids)
            roll = rng.random()
            body = f"p-{seed}-{i}"
            try:
                if roll < 0.5:
                    request: Any = AddPostRequest(body=body, actor_type="agent")
                elif roll < 0.6:
                    request = AnswerRequest(body=body, actor_type="operator")
                elif roll < 0.85:
                    request = ChangeStateRequest(to_state=rng.choice(states))
                elif roll < 0.93:
                    request = SetPriorityRequest(priority=rng.choice(["low", "normal", "high", "urgent"]))
                else:
                    request = CloseRequest()
                forum.submit_sync(request, thread_id=tid, wait=3.0)
                if isinstance(request, (AddPostRequest, AnswerRequest)):
                    with lock:
                        applied_posts.add(body)
            except ForumError as error:
                with lock:
                    refusals.append(error.message)
                    if isinstance(request, (AddPostRequest, AnswerRequest)):
                        refused_posts.add(body)

    writers = [threading.Thread(target=work, args=(seed,)) for seed in range(5)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    wait_consistent(forum_daemon)
    assert refusals, "the race produced no refusal at all; the test proves nothing"
    assert all(" is closed" in m or "is not allowed" in m for m in refusals), set(refusals)

    conn = connect(forum_daemon)
    try:
        # Every recorded transition is allowed, and per thread they chain from 'new' to the
        # thread's current state.
        for tid in tids:
            rows = conn.execute(
                "SELECT from_state, to_state FROM forum_state_transitions WHERE thread_id = ? ORDER BY id", (tid,)
            ).fetchall()
            current = "new"
            for from_state, to_state in rows:
                assert from_state == current, (tid, rows)
                assert from_state != to_state and transition_allowed(from_state, to_state), (from_state, to_state)
                current = to_state
            assert conn.execute("SELECT state FROM forum_threads WHERE thread_id = ?", (tid,)).fetchone()[0] == current
            closed_at = conn.execute("SELECT closed_at FROM forum_threads WHERE thread_id = ?", (tid,)).fetchone()[0]
            if closed_at is not None:
                late = conn.execute(
                    "SELECT COUNT(*) FROM forum_posts WHERE thread_id = ? AND created_at > ?", (tid, closed_at)
                ).fetchone()[0]
                assert late == 0, f"{late} post(s) accepted after {tid} was closed"
                close_seq = conn.execute(
                    "SELECT sequence FROM forum_events WHERE thread_id = ? AND event_type = 'forum.thread.closed'",
                    (tid,),
                ).fetchone()[0]
                after = conn.execute(
                    "SELECT COUNT(*) FROM forum_events WHERE thread_id = ? AND sequence > ?", (tid, close_seq)
                ).fetchone()[0]
                assert after == 0
        # Commands apply in the order they were accepted: the log's times never go backwards.
        times = [r[0] for r in conn.execute("SELECT occurred_at FROM forum_events ORDER BY sequence")]
        assert times == sorted(times)
        present = {r[0] for r in conn.execute("SELECT body FROM forum_posts")}
    finally:
        conn.close()
    assert applied_posts <= present
    assert not (refused_posts & present)
