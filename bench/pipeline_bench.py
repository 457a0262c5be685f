# Run:  .venv/bin/python bench/pipeline_bench.py [--writes 2000] [--rate 100] [--writers 8] [--duration 10]
"""Forum pipeline latency and throughput against a real Redis and a real SQLite file.

Starts its own ``redis-server`` and an in-process daemon (the whole actor tree plus a
``ForumService``) on a scratch directory, with SQLite ``synchronous=FULL`` as shipped, then:

(a) **latency**: ``--writes`` posts from one thread, paced at ``--rate`` per second; each is a
    ``submit_sync`` round trip, which returns once the ``thread_views`` projection committed the
    write (intake → outbox → Redis → handler → outbox → Redis → projection → broker);
(b) **throughput**: ``--writers`` threads each writing back to back for ``--duration`` seconds
    (read-your-writes round trips, so the figure includes the whole pipeline);
(c) **nothing lost**: once the pipeline drained, ``forum_events`` holds exactly one event per
    acknowledged write and every projection applied every event once.

Not a test: it prints figures (targets are in the spec's targets.md).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metawsm.daemon import Daemon
from metawsm.forum.ledger_retention import applied_above_floor
from metawsm.forum.requests import AddPostRequest, OpenThreadRequest
from metawsm.forum.service import ForumService
from metawsm.policy import policy_from_mapping
from metawsm.transport.redis_process import RedisProcess
from metawsm.waiting import wait_until


def handled(system: Any) -> dict[str, int]:
    """Messages each actor has handled so far, by path."""
    return {node.path: node.processed for node in system.inspect().walk()}


def context_switches() -> int:
    """Voluntary + involuntary context switches of every thread of this process so far."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                    total += int(line.split()[-1])
        except OSError:
            continue
    return total


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_phase(forum: ForumService, writes: int, rate: float) -> tuple[list[float], int, int]:
    """Paced single-writer round trips; returns (seconds per write, applied, accepted)."""
    tid = forum.submit_sync(OpenThreadRequest(ticket="BENCH", title="latency", body="start")).thread_id
    for i in range(20):  # warm-up (connections, caches)
        forum.submit_sync(AddPostRequest(body=f"warm-{i}"), thread_id=tid)
    seconds: list[float] = []
    applied = accepted = 0
    interval = 1.0 / rate
    start = time.perf_counter()
    for i in range(writes):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load generator, not synchronisation
        t0 = time.perf_counter()
        result = forum.submit_sync(AddPostRequest(body=f"lat-{i}"), thread_id=tid)
        seconds.append(time.perf_counter() - t0)
        if result.status == "applied":
            applied += 1
        else:
            accepted += 1
    return seconds, applied + 21, accepted


def throughput_phase(forum: ForumService, writers: int, duration: float) -> tuple[int, int, float, list[float]]:
    """``writers`` threads writing back to back; returns (applied, accepted, elapsed, latencies)."""
    tids = [forum.submit_sync(OpenThreadRequest(ticket="BENCH", title=f"load {w}", body="start")).thread_id
            for w in range(writers)]
    lock = threading.Lock()
    counts = {"applied": len(tids), "accepted": 0}
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    def work(w: int) -> None:
        mine: list[float] = []
        applied = accepted = 0
        i = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            result = forum.submit_sync(AddPostRequest(body=f"tp-{w}-{i}"), thread_id=tids[w])
            mine.append(time.perf_counter() - t0)
            if result.status == "applied":
                applied += 1
            else:
                accepted += 1
            i += 1
        with lock:
            counts["applied"] += applied
            counts["accepted"] += accepted
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(w,), name=f"bench-writer-{w}") for w in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return counts["applied"], counts["accepted"], elapsed, latencies


def drained(db_path: Path) -> tuple[int, dict[str, int], int] | None:
    conn = sqlite3.connect(str(db_path))
    try:
        pending = conn.execute("SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0]
        # Ledger rows above the retention floor, one per event there; every event at or below it
        # was applied by every projection (the floor counts them: sequences have no gaps).
        floor, above, ledger = applied_above_floor(conn)
        parked = conn.execute("SELECT COUNT(*) FROM forum_parked_messages").fetchone()[0]
    finally:
        conn.close()
    if pending or len(ledger) < 4 or any(rows != above for rows, _ in ledger.values()):
        return None
    return events, {name: floor + rows for name, (rows, _) in ledger.items()}, parked


def row(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    ms = [percentile(ordered, p) * 1000 for p in (50, 95, 99)] + [ordered[-1] * 1000, statistics.fmean(ordered) * 1000]
    return f"{name:<34}{len(ordered):>7}" + "".join(f"{v:>9.2f}" for v in ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="paced writes for the latency phase")
    parser.add_argument("--rate", type=float, default=100.0, help="writes per second in the latency phase")
    parser.add_argument("--writers", type=int, default=8, help="concurrent writer threads in the throughput phase")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the throughput phase")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (DB and Redis log)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    scratch = Path(tempfile.mkdtemp(prefix="metawsm-bench-"))
    redis_server = RedisProcess(scratch / "redis", appendonly=False)
    redis_server.start()
    daemon = forum = None
    try:
        policy = policy_from_mapping({"forum": {"redis": {
            "url": redis_server.url, "stream": "bench", "group": "bench", "embedded": "never"}}})
        db_path = scratch / "metawsm.db"
        daemon = Daemon(policy, db_path)
        system = daemon.start()
        assert daemon.services is not None
        forum = ForumService(system, daemon.services)
        print(f"redis {redis_server.url}, db {db_path} (synchronous={daemon.services.db.synchronous})")

        handled0, switches0 = handled(system), context_switches()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        lat, lat_applied, lat_accepted = latency_phase(forum, args.writes, args.rate)
        time.sleep(0.3)  # the last writes' trailing projections and acks (lingering up to 0.1 s)
        per_actor = {path: n - handled0.get(path, 0) for path, n in handled(system).items()}
        switches = context_switches() - switches0
        # The whole process (every actor thread, and the one paced writer), per write of the phase.
        cpu_per_write = (time.process_time() - cpu0) / (args.writes + 21) * 1000
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        tp_applied, tp_accepted, elapsed, tp_lat = throughput_phase(forum, args.writers, args.duration)
        acknowledged = lat_applied + lat_accepted + tp_applied + tp_accepted
        t0 = time.perf_counter()
        result = wait_until(lambda: drained(db_path), timeout=120, interval=0.05,
                            message="the pipeline did not drain")
        drain_s = time.perf_counter() - t0
        events, per_projection, parked = result
        restarts = system.summary()["restarts_total"]
    finally:
        if forum is not None:
            forum.close()
        if daemon is not None:
            daemon.stop()
        redis_server.stop()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"{'write -> thread_views committed':<34}{'n':>7}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}")
    print(row(f"latency @ {args.rate:g}/s (1 writer)", lat))
    print(row(f"throughput ({args.writers} writers)", tp_lat))
    print()
    writes = tp_applied + tp_accepted
    print(f"{'sustained writes/s':<34}{writes / elapsed:>10.0f}   ({writes} writes in {elapsed:.1f}s, "
          f"{args.writers} writers, {tp_accepted} answered 202)")
    print(f"{'latency phase 202s':<34}{lat_accepted:>10}")
    print(f"{'process CPU per write, latency':<34}{cpu_per_write:>10.2f} ms  ({cpu_share * 100:.0f}% of a core)")
    n = args.writes + 21
    print(f"{'context switches per write':<34}{switches / n:>10.1f}   (every thread of the process)")
    print(f"{'actor messages per write':<34}{sum(per_actor.values()) / n:>10.2f}   "
          + ", ".join(f"{path.rsplit('/', 1)[-1]} {count / n:.2f}"
                      for path, count in sorted(per_actor.items(), key=lambda item: -item[1]) if count))
    print(f"{'drain after load':<34}{drain_s * 1000:>10.0f} ms")
    print(f"{'acknowledged writes':<34}{acknowledged:>10}")
    print(f"{'forum_events':<34}{events:>10}")
    print(f"{'projection_events':<34}{'':>4}" + ", ".join(f"{k} {v}" for k, v in sorted(per_projection.items())))
    print(f"{'parked / actor restarts':<34}{parked:>10} / {restarts}")
    lost = acknowledged != events
    print()
    print("nothing lost: forum_events == acknowledged writes" if not lost
          else f"MISMATCH: {acknowledged} acknowledged writes, {events} events")
    return 1 if lost or parked else 0


if __name__ == "__main__":
    sys.exit(main())
