# Run:  .venv/bin/python bench/chaos.py                      # 50 kills over 10,000 writes, Redis phase
#       .venv/bin/python bench/chaos.py --kills 5 --writes 500  # the short version the test suite runs
"""Chaos: random ``kill -9`` of serve under write load, Redis lost and restarted empty, then invariants.

Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory.  ``--clients``
HTTP clients write ``--writes`` times in all (mostly ``add_post``, some ``open_thread`` and
control signals), each write with a unique ``correlation_id``; every write answered 200 or
202 is logged as acknowledged (with the ``event_id`` of a 202).  ``--ws`` WebSocket clients
follow ``/api/v1/forum/stream`` from cursor 0; when a connection drops they reconnect with
the last ``next_cursor`` they received.

Meanwhile a controller ``kill -9``s serve ``--kills`` times at random moments (random points
of the write stream) and starts it again at once; half-way through, unless ``--no-redis``,
it stops Redis for ``--redis-down`` seconds, wipes its data and starts it empty, watching
``/api/v1/health`` go ``degraded`` and come back ``ok``.

Afterwards, once the pipeline has drained, it checks the invariants of ``targets.md``:

* every acknowledged write is in ``forum_events`` exactly once (by correlation id; a 202's
  ``event_id`` is the command's event id, which is the event's id);
* every projection applied every event exactly once (``forum_projection_events`` rows per
  projection == events above the ledger floor, which retention moves past old events whose rows
  it deleted, and 0 until it does; no duplicates, checkpoints at the newest sequence);
* thread view counters equal a recount from the write model (``posts_count`` vs
  ``forum_posts``, state/priority/last sequence, ``thread_stats`` vs a GROUP BY);
* no duplicate sequence within one WebSocket connection (and, across each client's
  reconnections with ``next_cursor``, no gap and no repeat).

It prints what it did and what it found, and exits 1 on any violation.  Not a test itself;
``tests/test_chaos_short.py`` runs a short version through :func:`run_chaos`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    HttpClosed,
    RawHttp,
    Scratch,
    Serve,
    auth,
    check_invariants,
    http,
    machine_facts,
    policy,
    report_invariants,
    start_redis,
    wait_caught_up,
)
from metawsm.store import open_connection

TICKET = "CHAOS"
RUNS = ("chaos-run-1", "chaos-run-2", "chaos-run-3")
AGENTS = ("a1", "a2")


@dataclass
class Outcome:
    did: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class WriteLog:
    """What the clients were told: acknowledged writes, and everything else by kind."""

    def __init__(self) -> None:
        self.acknowledged: list[dict[str, Any]] = []
        self.statuses: dict[int, int] = {}
        self.unknown = 0  # sent, no answer (connection cut): may or may not have applied
        self.attempted = 0
        self.threads: list[str] = []


class Lineage:
    """One WebSocket client across its reconnections."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.cursor = 0
        self.connections = 0
        self.duplicates_within: list[str] = []
        self.sequences: list[int] = []
        self.frames = 0


async def ws_client(url: str, lineage: Lineage, stop: threading.Event) -> None:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=2)) as session:
        while not stop.is_set():
            try:
                async with session.ws_connect(f"{url}/api/v1/forum/stream?cursor={lineage.cursor}",
                                              max_msg_size=0, heartbeat=None, headers=auth(url)) as ws:
                    lineage.connections += 1
                    seen: set[int] = set()
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        frame = json.loads(message.data)
                        if frame.get("type") == "forum.events":
                            lineage.frames += 1
                            for event in frame["events"]:
                                sequence = event["sequence"]
                                if sequence in seen:
                                    lineage.duplicates_within.append(
                                        f"client {lineage.number} connection {lineage.connections}: sequence "
                                        f"{sequence} twice")
                                seen.add(sequence)
                                lineage.sequences.append(sequence)
                        if "next_cursor" in frame:
                            lineage.cursor = max(lineage.cursor, int(frame["next_cursor"]))
                        if stop.is_set():
                            break
            except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
                pass
            if not stop.is_set():
                await asyncio.sleep(0.05)


async def writer(serve: Serve, log: WriteLog, total: int, rng: random.Random, number: int) -> None:
    conn = RawHttp("127.0.0.1", serve.port)
    while log.attempted < total:
        if conn.writer is None:
            try:
                await conn.connect()
            except OSError:  # serve is down or restarting: nothing was sent, nothing to log
                await asyncio.sleep(0.01)
                continue
        i = log.attempted
        log.attempted += 1
        token = f"chaos-{number}-{i}"
        roll = rng.random()
        if roll < 0.05 or not log.threads:
            path = "/api/v1/forum/threads"
            body: dict[str, Any] = {"ticket": TICKET, "title": f"chaos {i}", "body": token}
        elif roll < 0.08:
            run_id, agent = rng.choice(RUNS), rng.choice(AGENTS)
            kind = rng.choice(("guidance_request", "completion"))
            payload: dict[str, Any] = {"schema_version": 1, "control_type": kind, "run_id": run_id,
                                       "agent_name": agent}
            payload.update({"question": f"q {token}?"} if kind == "guidance_request" else {"summary": token})
            path = "/api/v1/forum/control/signal"
            body = {"run_id": run_id, "ticket": TICKET, "agent_name": agent, "actor_type": "agent",
                    "actor_name": agent, "payload": payload}
        else:
            path = f"/api/v1/forum/threads/{rng.choice(log.threads)}/posts"
            body = {"body": token}
        body["correlation_id"] = token
        try:
            status, raw = await conn.request("POST", path, json.dumps(body).encode())
        except (HttpClosed, ConnectionError, OSError):
            log.unknown += 1  # sent, but no answer: it may or may not have been accepted
            await conn.close()
            continue
        log.statuses[status] = log.statuses.get(status, 0) + 1
        if status in (200, 202):
            data = json.loads(raw)
            entry: dict[str, Any] = {"token": token, "status": status}
            if status == 202:
                entry["event_id"] = data["event_id"]
            log.acknowledged.append(entry)
            if path == "/api/v1/forum/threads":
                log.threads.append(data["thread"]["thread_id"] if status == 200 else data["thread_id"])
    await conn.close()


def controller(serve: Serve, redis_server: Any, log: WriteLog, total: int, kills: int, redis_phase: bool,
               redis_down: float, rng: random.Random, did: list[str], notes: dict[str, Any],
               done: threading.Event) -> None:
    low, high = int(total * 0.05), max(int(total * 0.95), int(total * 0.05) + kills + 1)
    events: list[tuple[int, str]] = [(p, "kill") for p in sorted(rng.sample(range(low, high), kills))]
    if redis_phase:
        events.append((total // 2, "redis"))
    events.sort()
    restarts: list[float] = []
    try:
        for position, what in events:
            while log.attempted < position and not done.is_set():
                time.sleep(0.002)
            if done.is_set():
                break
            if what == "kill":
                serve.kill()
                started = time.perf_counter()
                serve.spawn()
                serve.wait_healthy(60, interval=0.01)
                restarts.append(time.perf_counter() - started)
            else:
                seen: list[str] = []
                redis_server.stop()
                down_until = time.monotonic() + redis_down
                while time.monotonic() < down_until:
                    seen.append(_health(serve.url))
                    time.sleep(0.2)
                redis_server.wipe_data()
                redis_server.start()
                back = time.perf_counter()
                while True:
                    status = _health(serve.url)
                    seen.append(status)
                    if status == "ok" or time.perf_counter() - back > 60:
                        break
                    time.sleep(0.05)
                notes["redis_health"] = _squeeze(seen)
                notes["redis_back_to_ok"] = time.perf_counter() - back
                did.append(f"Redis stopped at write {position} for {redis_down:g} s, data wiped, started empty; "
                           f"health went {' -> '.join(notes['redis_health'])} "
                           f"({notes['redis_back_to_ok']:.2f} s after Redis was back)")
    finally:
        notes["restarts"] = restarts


def _health(url: str) -> str:
    try:
        status, body = http(url, "GET", "/api/v1/health", timeout=2)
    except OSError:
        return "unreachable"
    return body.get("status", str(status)) if isinstance(body, dict) else str(status)


def _squeeze(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


def run_chaos(workdir: Path, *, kills: int = 50, writes: int = 10_000, clients: int = 8, ws: int = 3,
              redis_phase: bool = True, redis_down: float = 2.0, seed: int | None = None,
              write_wait_ms: int = 1000, echo: Any = print) -> Outcome:
    """Run the chaos scenario in ``workdir``; returns what it did, found and every violation."""
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    outcome = Outcome()
    redis_server = start_redis(workdir, appendonly=True)
    serve = Serve(workdir / "serve", policy(redis_server.url, write_wait_ms=write_wait_ms))
    log = WriteLog()
    stop_ws = threading.Event()
    done = threading.Event()
    notes: dict[str, Any] = {}
    lineages = [Lineage(i + 1) for i in range(ws)]
    try:
        serve.start()
        started = time.perf_counter()
        ctl = threading.Thread(target=controller, args=(serve, redis_server, log, writes, kills, redis_phase,
                                                        redis_down, rng, outcome.did, notes, done), daemon=True)

        async def main_load() -> None:
            ws_tasks = [asyncio.create_task(ws_client(serve.url, lineage, stop_ws)) for lineage in lineages]
            ctl.start()
            await asyncio.gather(*(writer(serve, log, writes, random.Random(rng.random()), n)
                                   for n in range(clients)))
            done.set()
            await asyncio.get_running_loop().run_in_executor(None, ctl.join)
            if not serve.alive():
                serve.start()
            drained = await asyncio.get_running_loop().run_in_executor(None, wait_caught_up, serve.db_path, 300.0)
            notes["drain"] = drained
            newest = _newest(serve.db_path)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and any(line.cursor < newest for line in lineages):
                await asyncio.sleep(0.1)
            stop_ws.set()
            for task in ws_tasks:
                task.cancel()
            await asyncio.gather(*ws_tasks, return_exceptions=True)

        asyncio.run(main_load())
        elapsed = time.perf_counter() - started
        restarts = notes.get("restarts", [])
        outcome.did.insert(0, f"seed {seed}: {clients} HTTP clients, {writes} writes attempted in {elapsed:.1f} s; "
                              f"{len(restarts)} kill -9 of serve, each restarted at once "
                              f"(spawn -> healthy: max {max(restarts, default=0):.2f} s)")
        outcome.did.append(f"answers: {dict(sorted(log.statuses.items()))}; sent but no answer (connection cut): "
                           f"{log.unknown}; acknowledged (200/202): {len(log.acknowledged)}")
        outcome.did.append(f"{ws} WebSocket clients, {sum(line.connections for line in lineages)} connections in all, "
                           f"{sum(line.frames for line in lineages)} event frames")
        if notes.get("drain", -1) < 0:
            outcome.violations.append("the pipeline did not drain within 300 s after the load")
        found, bad = check_invariants(serve.db_path, log.acknowledged)
        outcome.found += found
        outcome.violations += bad
        if redis_phase:
            seen = notes.get("redis_health", [])
            if "degraded" not in seen or not seen or seen[-1] != "ok":
                outcome.violations.append(f"health during the Redis phase went {seen}, expected degraded then ok")
        newest = _newest(serve.db_path)
        for lineage in lineages:
            outcome.violations += lineage.duplicates_within[:10]
            unique = set(lineage.sequences)
            repeats = len(lineage.sequences) - len(unique)
            missing = [s for s in range(1, newest + 1) if s not in unique]
            outcome.found.append(f"WebSocket client {lineage.number}: {lineage.connections} connections, "
                                 f"{len(lineage.sequences)} events, within-connection duplicates "
                                 f"{len(lineage.duplicates_within)}, repeats across reconnects {repeats}, "
                                 f"gaps {len(missing)}")
            if repeats:
                outcome.violations.append(f"WebSocket client {lineage.number} got {repeats} event(s) again after "
                                          "reconnecting with next_cursor")
            if missing:
                outcome.violations.append(f"WebSocket client {lineage.number} never got {len(missing)} event(s), "
                                          f"e.g. sequence {missing[0]}")
    finally:
        done.set()
        stop_ws.set()
        serve.stop()
        redis_server.stop()
    return outcome


def _newest(db_path: Path) -> int:
    conn = open_connection(db_path, read_only=True)
    try:
        return int(conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0])
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="kill -9 of serve (default 50)")
    parser.add_argument("--writes", type=int, default=10_000, help="writes in all (default 10000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--ws", type=int, default=3, help="WebSocket clients (default 3)")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis stop/restart-empty phase")
    parser.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed; default random)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    print(machine_facts())
    with Scratch(args.keep) as scratch:
        outcome = run_chaos(scratch.path, kills=args.kills, writes=args.writes, clients=args.clients, ws=args.ws,
                            redis_phase=not args.no_redis, redis_down=args.redis_down, seed=args.seed)
    print("what it did:")
    for line in outcome.did:
        print(f"  {line}")
    return report_invariants("what it found:", outcome.found, outcome.violations, "OK: no invariant violated")


if __name__ == "__main__":
    sys.exit(main())
