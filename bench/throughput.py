# Run:  .venv/bin/python bench/throughput.py [--duration 60] [--connections 128]
#       .venv/bin/python bench/throughput.py --duration 600          # the 10-minute target run
"""Sustained forum writes/s through a real ``metawsm serve``, then the nothing-lost check.

Starts a private ``redis-server`` and ``metawsm serve`` (SQLite ``synchronous=FULL``) in a
scratch directory.  ``--connections`` keep-alive HTTP connections each send ``add_post``
requests back to back (closed loop: the next one as soon as the previous was answered) for
``--duration`` seconds, spread over ``--threads`` forum threads.  Every request carries a
unique ``correlation_id``; every answer 200 or 202 is logged as acknowledged (with its
``event_id`` for a 202).

Then, once the pipeline has drained, it checks (and prints) the invariants: every
acknowledged write is in ``forum_events`` exactly once (matched by correlation id, and by
event id for a 202), every projection applied every event exactly once, thread view counters
equal a recount from the write model, nothing pending or parked.  Exit status 1 on any
violation.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    HttpClosed,
    MachineLoad,
    RawHttp,
    Scratch,
    Serve,
    check_invariants,
    latency_row,
    machine_facts,
    policy,
    report_invariants,
    start_redis,
    table,
    wait_caught_up,
)

TICKET = "TP"


async def load(serve: Serve, connections: int, threads: int, duration: float, interval: float
               ) -> dict[str, Any]:
    setup = await RawHttp("127.0.0.1", serve.port).connect()
    thread_ids = []
    for i in range(threads):
        body = json.dumps({"ticket": TICKET, "title": f"throughput {i}", "body": "start",
                           "correlation_id": f"open-{i}"}).encode()
        status, raw = await setup.request("POST", "/api/v1/forum/threads", body)
        if status != 200:
            raise SystemExit(f"opening a thread answered {status}: {raw[:300]!r}")
        thread_ids.append(json.loads(raw)["thread"]["thread_id"])
    await setup.close()
    acknowledged: list[dict[str, Any]] = [{"token": f"open-{i}", "status": 200} for i in range(threads)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    per_interval: list[int] = []
    stop_at = time.perf_counter() + duration

    async def worker(w: int) -> None:
        conn = await RawHttp("127.0.0.1", serve.port).connect()
        path = f"/api/v1/forum/threads/{thread_ids[w % threads]}/posts"
        i = 0
        while time.perf_counter() < stop_at:
            token = f"w{w}-{i}"
            i += 1
            body = json.dumps({"body": f"throughput {token}", "correlation_id": token}).encode()
            t0 = time.perf_counter()
            try:
                status, raw = await conn.request("POST", path, body)
            except (HttpClosed, ConnectionError, OSError) as error:
                errors.append(str(error))
                await conn.close()
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                acknowledged.append({"token": token, "status": 200})
            elif status == 202:
                acknowledged.append({"token": token, "status": 202, "event_id": json.loads(raw)["event_id"]})
        await conn.close()

    async def ticker() -> None:
        last = 0
        while time.perf_counter() < stop_at:
            await asyncio.sleep(interval)
            done = len(latencies)
            per_interval.append(done - last)
            last = done

    cpu0, started = serve.cpu_seconds(), time.perf_counter()
    tick = asyncio.create_task(ticker())
    await asyncio.gather(*(worker(w) for w in range(connections)))
    elapsed = time.perf_counter() - started
    cpu = serve.cpu_seconds() - cpu0
    tick.cancel()
    return {"acknowledged": acknowledged, "latencies": latencies, "statuses": statuses, "errors": errors,
            "elapsed": elapsed, "cpu_share": cpu / elapsed, "per_interval": per_interval}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60; 600 = 10 min)")
    parser.add_argument("--connections", type=int, default=128,
                        help="concurrent client connections (default 128: enough requests in flight to keep the daemon busy)")
    parser.add_argument("--threads", type=int, default=32, help="forum threads written to (default 32)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per interval in the timeline")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url))
        try:
            serve.start()
            machine = MachineLoad(serve.pid, redis_server.pid or 0)
            result = asyncio.run(load(serve, args.connections, args.threads, args.duration, args.interval))
            busy = machine.describe()
            drain = wait_caught_up(serve.db_path, timeout=300)
            found, bad = check_invariants(serve.db_path, result["acknowledged"])
        finally:
            serve.stop()
            redis_server.stop()

    writes = len(result["latencies"])
    print(machine_facts())
    print(f"daemon: metawsm serve, SQLite synchronous=FULL (intake/handler); {args.connections} connections, "
          f"{args.threads} threads, {args.duration:g} s")
    print()
    print(table(["figure", "value"], [
        ["sustained writes/s", f"{writes / result['elapsed']:.0f}"],
        ["writes answered", f"{writes} in {result['elapsed']:.1f} s"],
        ["HTTP statuses", str(dict(sorted(result["statuses"].items())))],
        ["connection errors", str(len(result["errors"]))],
        ["serve CPU (of one core)", f"{result['cpu_share'] * 100:.0f}%"],
        [f"writes/s per {args.interval:g} s interval",
         " ".join(f"{n / args.interval:.0f}" for n in result["per_interval"])],
        ["drain after load", f"{drain * 1000:.0f} ms" if drain >= 0 else "NOT DRAINED in 300 s"],
    ], left=True))
    print(busy)
    print()
    print(table(LATENCY_HEADERS, [latency_row("POST -> 200/202 under load", result["latencies"])]))
    print()
    return report_invariants("nothing-lost check:", found, bad,
                             "OK: every acknowledged write is in forum_events once; projections caught up, counters match")


if __name__ == "__main__":
    sys.exit(main())
