# Run:  .venv/bin/python bench/latency.py [--rate 100] [--writes 2000]
#       .venv/bin/python bench/latency.py --rate 1000 --writes 10000
"""Forum write latency as an external client sees it: HTTP POST -> projection -> WebSocket frame.

Starts a private ``redis-server`` and a real ``metawsm serve`` (SQLite ``synchronous=FULL``) in
a scratch directory.  One WebSocket client subscribes to ``/api/v1/forum/stream`` (filtered
on the bench ticket); the writer then sends ``--writes`` ``add_post`` requests at ``--rate``
per second, open loop (each request is sent at its due time on a free keep-alive connection,
whether or not earlier ones were answered), spread over ``--threads`` threads.  Every post
carries a unique ``correlation_id``, which comes back in the event's envelope, so each frame
is matched to the request that caused it.

Per write it records
* **POST -> WS frame**: from just before the request is written to the moment the frame holding
  its event is read by the WebSocket client (the target figure);
* **POST -> 200**: the HTTP round trip (the daemon answers once ``thread_views`` committed).

``--rate`` takes a comma-separated list to run several rates against one daemon.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    MachineLoad,
    Pool,
    Scratch,
    Serve,
    auth,
    latency_row,
    machine_facts,
    policy,
    start_redis,
    table,
)

TICKET = "LAT"


class Watcher:
    """The external WebSocket client: records when each token's frame arrives."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.sequences: list[int] = []
        self.ready = asyncio.Event()
        self.arrived = asyncio.Event()
        self.close_code: int | None = None

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.perf_counter()
            frame = json.loads(message.data)
            if frame["type"] == "heartbeat":
                self.ready.set()
            elif frame["type"] == "forum.events":
                for event in frame["events"]:
                    self.sequences.append(event["sequence"])
                    token = event["envelope"].get("correlation_id", "")
                    self.received.setdefault(token, now)
                self.arrived.set()
        self.close_code = ws.close_code


async def open_threads(pool: Pool, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = json.dumps({"ticket": TICKET, "title": f"latency {i}", "body": "start"}).encode()
        status, raw = await pool.request("POST", "/api/v1/forum/threads", body)
        if status != 200:
            raise SystemExit(f"opening a thread answered {status}: {raw[:300]!r}")
        ids.append(json.loads(raw)["thread"]["thread_id"])
    return ids


async def phase(pool: Pool, watcher: Watcher, threads: list[str], rate: float, writes: int,
                label: str) -> dict[str, object]:
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    statuses: dict[int, int] = {}
    errors = 0

    async def one(i: int) -> None:
        nonlocal errors
        token = f"{label}-{i}-{uuid.uuid4().hex[:8]}"
        path = f"/api/v1/forum/threads/{threads[i % len(threads)]}/posts"
        body = json.dumps({"body": f"latency write {i}", "correlation_id": token}).encode()
        t0 = time.perf_counter()
        sent[token] = t0
        try:
            status, _ = await pool.request("POST", path, body)
        except (ConnectionError, OSError):
            errors += 1
            return
        answered[token] = time.perf_counter() - t0
        statuses[status] = statuses.get(status, 0) + 1

    interval = 1.0 / rate
    tasks = []
    start = time.perf_counter()
    lag_max = 0.0
    for i in range(writes):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_max = max(lag_max, -delay)
        tasks.append(asyncio.create_task(one(i)))
    sending = time.perf_counter() - start
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(token not in watcher.received for token in sent):
        watcher.arrived.clear()
        try:
            await asyncio.wait_for(watcher.arrived.wait(), 0.5)
        except TimeoutError:
            pass
    frame = [watcher.received[t] - t0 for t, t0 in sent.items() if t in watcher.received]
    return {
        "frame": frame,
        "http": list(answered.values()),
        "statuses": statuses,
        "errors": errors,
        "missing": sum(1 for t in sent if t not in watcher.received),
        "elapsed": elapsed,
        "offered": (writes - 1) / sending if sending > 0 else float(writes),
        "pacing_lag_max_ms": lag_max * 1000,
    }


async def main_async(args: argparse.Namespace, serve: Serve, load: MachineLoad | None = None) -> int:
    rates = [float(r) for r in str(args.rate).split(",") if r.strip()]
    pool = Pool("127.0.0.1", serve.port, args.connections)
    watcher = Watcher()
    results = []
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{serve.url}/api/v1/forum/stream?ticket={TICKET}", max_msg_size=0,
                                      headers=auth(serve.url))
        reader = asyncio.create_task(watcher.run(ws))
        await asyncio.wait_for(watcher.ready.wait(), 10)
        threads = await open_threads(pool, args.threads)
        warm = await phase(pool, watcher, threads, min(rates), args.warmup, "warm")
        if warm["missing"]:
            print(f"warning: {warm['missing']} warm-up frames never arrived")
        if load is not None:
            load.reset()
        for rate in rates:
            cpu0, wall0 = serve.cpu_seconds(), time.perf_counter()
            result = await phase(pool, watcher, threads, rate, args.writes, f"r{rate:g}")
            result["cpu_share"] = (serve.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
            results.append((rate, result))
        await ws.close()
        await reader
        await pool.close()
    seqs = watcher.sequences
    duplicates = len(seqs) - len(set(seqs))
    ordered = all(a < b for a, b in zip(seqs, seqs[1:]))

    print(machine_facts())
    print(f"daemon: metawsm serve pid {serve.pid}, SQLite synchronous=FULL (intake/handler), "
          f"{args.threads} threads, up to {args.connections} keep-alive connections")
    print()
    rows = []
    for rate, r in results:
        rows.append(latency_row(f"POST -> WS frame @ {rate:g}/s", r["frame"]))
        rows.append(latency_row(f"POST -> 200      @ {rate:g}/s", r["http"]))
    print(table(LATENCY_HEADERS, rows))
    print()
    extra = [[f"{rate:g}/s", f"{r['offered']:.0f}", f"{r['elapsed']:.1f}", str(dict(sorted(r['statuses'].items()))), r["errors"],
              r["missing"], f"{r['cpu_share'] * 100:.0f}%", f"{r['pacing_lag_max_ms']:.1f}"]
             for rate, r in results]
    print(table(["rate", "sent/s", "all answered s", "HTTP statuses", "errors", "frames missing", "serve CPU",
                 "max send lag ms"], extra))
    print(f"WebSocket: {len(seqs)} events received, duplicates {duplicates}, in order {ordered}, "
          f"close code {watcher.close_code}")
    if load is not None:
        print(load.describe())
    failed = any(r["missing"] or r["errors"] for _, r in results) or duplicates or not ordered
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", default="100", help="writes per second; a comma list runs several (default 100)")
    parser.add_argument("--writes", type=int, default=2000, help="writes per rate (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="writes before measuring (default 200)")
    parser.add_argument("--threads", type=int, default=8, help="forum threads the writes are spread over")
    parser.add_argument("--connections", type=int, default=64, help="max keep-alive HTTP connections")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url))
        try:
            serve.start()
            return asyncio.run(main_async(args, serve, MachineLoad(serve.pid, redis_server.pid or 0)))
        finally:
            serve.stop()
            redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
