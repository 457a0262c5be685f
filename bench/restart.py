# Run:  .venv/bin/python bench/restart.py [--kills 10] [--backlog 2000]
"""``kill -9`` of serve -> serving again, Redis restarts, and backlog drain rates.

Starts a private ``redis-server`` (append-only file on) and ``metawsm serve`` in a scratch
directory.  The policy's ``forum.write_wait_ms`` is 100 ms so that writes made while Redis is
down come back 202 quickly (the default 5 s would only slow the backlog's creation).

1. **kill -9 -> serving again** (``--kills`` times, a light write load running): SIGKILL
   serve, start it again at once; figures: spawn -> ``/api/v1/health`` 200, and kill -> the
   first write answered 200 (the whole pipeline works again).
2. **Redis restarted empty**: stop Redis, accept ``--backlog`` writes (202, durable in the
   outbox), wipe Redis' data and start it; figures: Redis back -> health ``ok`` again, Redis
   back -> first backlog event projected (pipeline delivering again), and the drain rate
   (events/s until every projection has the whole backlog).
3. **backlog built while the daemon was down**: stop Redis, accept ``--backlog`` writes,
   ``kill -9`` serve, start Redis (data kept) and serve; figures: spawn -> health 200 and the
   drain rate of the backlog from there.

Finally the invariants: every acknowledged (200/202) write is in ``forum_events`` exactly
once, projections applied every event once, counters match.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    PROJECTIONS,
    RawHttp,
    Scratch,
    Serve,
    check_invariants,
    http,
    latency_row,
    machine_facts,
    policy,
    report_invariants,
    start_redis,
    table,
    wait_caught_up,
)
from metawsm.forum.ledger_retention import applied_above_floor
from metawsm.store import open_connection

TICKET = "RESTART"


class Writer:
    """Writes over HTTP and keeps the log of acknowledged writes (token -> status, event id)."""

    def __init__(self, serve: Serve) -> None:
        self.serve = serve
        self.acknowledged: list[dict[str, Any]] = []
        self.failed = 0
        self.counter = 0
        self.lock = threading.Lock()
        self.thread_id = ""

    def token(self, prefix: str) -> str:
        with self.lock:
            self.counter += 1
            return f"{prefix}-{self.counter}"

    def note(self, token: str, status: int, raw: bytes) -> None:
        with self.lock:
            if status == 200:
                self.acknowledged.append({"token": token, "status": 200})
            elif status == 202:
                self.acknowledged.append({"token": token, "status": 202, "event_id": json.loads(raw)["event_id"]})
            else:
                self.failed += 1

    def open_thread(self) -> None:
        token = self.token("open")
        status, body = http(self.serve.url, "POST", "/api/v1/forum/threads",
                            {"ticket": TICKET, "title": "restart", "body": "start", "correlation_id": token})
        if status != 200:
            raise SystemExit(f"opening the thread answered {status}: {body}")
        self.note(token, 200, b"")
        self.thread_id = body["thread"]["thread_id"]

    async def post(self, conn: RawHttp, prefix: str) -> int:
        token = self.token(prefix)
        body = json.dumps({"body": token, "correlation_id": token}).encode()
        try:
            status, raw = await conn.request("POST", f"/api/v1/forum/threads/{self.thread_id}/posts", body)
        except (ConnectionError, OSError):
            await conn.close()
            with self.lock:
                self.failed += 1
            return 0
        self.note(token, status, raw)
        return status

    def burst(self, count: int, connections: int, prefix: str) -> dict[int, int]:
        """``count`` writes over ``connections`` connections, as fast as they are answered."""
        statuses: dict[int, int] = {}

        async def run() -> None:
            remaining = [count]

            async def worker() -> None:
                conn = RawHttp("127.0.0.1", self.serve.port)
                while remaining[0] > 0:
                    remaining[0] -= 1
                    status = await self.post(conn, prefix)
                    statuses[status] = statuses.get(status, 0) + 1
                await conn.close()

            await asyncio.gather(*(worker() for _ in range(connections)))

        asyncio.run(run())
        return statuses


def applied_counts(db_path: Path) -> tuple[int, int]:
    """(events in the log, events applied by the slowest projection).

    Retention deletes the ledger rows of old events and moves the ledger floor past them; every
    event at or below it was applied everywhere, and the floor counts them (sequences have no
    gaps), so applied = floor + ledger rows above it."""
    conn = open_connection(db_path, read_only=True)
    try:
        floor, above, ledger = applied_above_floor(conn)
    finally:
        conn.close()
    return floor + above, floor + min(ledger.get(p, (0, 0))[0] for p in PROJECTIONS)


def drain(db_path: Path, target: int, started: float, timeout: float = 300.0) -> tuple[float, float]:
    """Wait until every projection applied ``target`` events; returns (first progress s, done s)."""
    _, base = applied_counts(db_path)
    first = -1.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, applied = applied_counts(db_path)
        now = time.perf_counter() - started
        if first < 0 and applied > base:
            first = now
        if applied >= target:
            return (first if first >= 0 else now), now
        time.sleep(0.01)
    raise SystemExit(f"the backlog did not drain within {timeout}s ({applied_counts(db_path)} of {target})")


def health_status(url: str) -> str:
    try:
        status, body = http(url, "GET", "/api/v1/health", timeout=2)
    except OSError:
        return "down"
    return body.get("status", str(status)) if isinstance(body, dict) else str(status)


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.005) -> float:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not happen within {timeout}s")
        time.sleep(interval)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="kill -9 / restart rounds (default 10)")
    parser.add_argument("--backlog", type=int, default=2000, help="writes in each backlog (default 2000)")
    parser.add_argument("--connections", type=int, default=32, help="client connections for the backlog")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    spawn_to_health: list[float] = []
    kill_to_write: list[float] = []
    report: list[list[Any]] = []
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path, appendonly=True)
        serve = Serve(scratch.path / "serve", policy(redis_server.url, write_wait_ms=100))
        writer = Writer(serve)
        try:
            serve.start()
            writer.open_thread()
            writer.burst(200, 4, "warm")

            # 1. kill -9 -> serving again
            stop = threading.Event()

            def light_load() -> None:
                async def run() -> None:
                    conn = RawHttp("127.0.0.1", serve.port)
                    while not stop.is_set():
                        if serve.alive():
                            await writer.post(conn, "load")
                        await asyncio.sleep(0.02)
                    await conn.close()
                asyncio.run(run())

            loader = threading.Thread(target=light_load, daemon=True)
            loader.start()
            for _ in range(args.kills):
                time.sleep(0.5)
                killed = time.perf_counter()
                serve.kill()
                spawned = time.perf_counter()
                serve.spawn()
                serve.wait_healthy(30, interval=0.002)
                spawn_to_health.append(time.perf_counter() - spawned)

                async def first_write() -> None:
                    conn = RawHttp("127.0.0.1", serve.port)
                    while await writer.post(conn, "probe") != 200:
                        await asyncio.sleep(0.002)
                    await conn.close()

                asyncio.run(first_write())
                kill_to_write.append(time.perf_counter() - killed)
            stop.set()
            loader.join(10)

            # 2. Redis restarted empty with a backlog
            redis_server.stop()
            statuses = writer.burst(args.backlog, args.connections, "redis-down")
            target = applied_counts(serve.db_path)[0] + statuses.get(202, 0) + statuses.get(200, 0)
            degraded = health_status(serve.url)
            redis_server.wipe_data()
            redis_server.start()
            back = time.perf_counter()
            health_ok = wait_for(lambda: health_status(serve.url) == "ok", 60, "health ok after the Redis restart")
            first, done = drain(serve.db_path, target, back)
            report += [
                ["Redis restarted empty: health while down", degraded],
                ["  backlog accepted while Redis was down", str(dict(sorted(statuses.items())))],
                ["  Redis back -> health ok", f"{health_ok * 1000:.0f} ms"],
                ["  Redis back -> first backlog event projected", f"{first * 1000:.0f} ms"],
                ["  Redis back -> backlog drained", f"{done * 1000:.0f} ms ({statuses.get(202, 0)} writes)"],
                ["  drain rate", f"{statuses.get(202, 0) / max(done - first, 1e-6):.0f} events/s"],
            ]

            # 3. backlog built while the daemon was down
            redis_server.stop()
            statuses = writer.burst(args.backlog, args.connections, "daemon-down")
            target = applied_counts(serve.db_path)[0] + statuses.get(202, 0) + statuses.get(200, 0)
            serve.kill()
            redis_server.start()
            spawned = time.perf_counter()
            serve.spawn()
            up = serve.wait_healthy(30, interval=0.002)
            first, done = drain(serve.db_path, target, spawned)
            report += [
                ["daemon killed with a backlog: spawn -> health 200", f"{up * 1000:.0f} ms"],
                ["  backlog accepted before the kill", str(dict(sorted(statuses.items())))],
                ["  spawn -> first backlog event projected", f"{first * 1000:.0f} ms"],
                ["  spawn -> backlog drained", f"{done * 1000:.0f} ms ({statuses.get(202, 0)} writes)"],
                ["  drain rate", f"{statuses.get(202, 0) / max(done - first, 1e-6):.0f} events/s"],
            ]
            caught = wait_caught_up(serve.db_path, timeout=120)
            found, bad = check_invariants(serve.db_path, writer.acknowledged)
        finally:
            serve.stop()
            redis_server.stop()

    print(machine_facts())
    print(f"policy: forum.write_wait_ms 100; {args.kills} kill -9 rounds; backlogs of {args.backlog} writes")
    print()
    print(table(LATENCY_HEADERS, [
        latency_row("kill -9: spawn -> health 200", spawn_to_health),
        latency_row("kill -9 -> first write 200", kill_to_write),
    ], title="kill -9 of serve -> serving again"))
    print()
    print(table(["figure", "value"], report, left=True))
    print()
    print(f"writes acknowledged {len(writer.acknowledged)}, refused or failed {writer.failed} "
          f"(not acknowledged, not checked); caught up: {caught >= 0}")
    return report_invariants("invariants:", found, bad)


if __name__ == "__main__":
    sys.exit(main())
