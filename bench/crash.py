# Run:  .venv/bin/python bench/crash.py [--n 30] [--load 20]
"""Actor crash -> replacement answers, per actor kind, through the fault-injection route.

Starts a private ``redis-server`` and ``metawsm serve --debug`` in a scratch directory, keeps
a light write load going (``--load`` writes/s over HTTP, 0 for none), and ``--n`` times per
actor kind sends ``POST /api/v1/debug/actors/{path}/crash``, then polls until the
replacement answers:

* ``intake`` (stateless): a cheap write that only the intake answers (a post to a thread that
  does not exist: 404 from the new intake, 503 while it restarts);
* ``relay``, ``consumer``, ``handler``, ``broker`` (stateless): ``GET /api/v1/debug/actors``
  shows a new incarnation (new urn) of that path ``running``;
* ``projection`` (``thread_views``, ...): a new incarnation running **and** caught up (its
  checkpoint equals the newest event: lag 0 in ``/api/v1/health``).

The clock starts when the crash request is sent.  ``ForumSupervisor`` is ``rest_for_one``,
so crashing the intake or the relay restarts every pipeline actor started after it too;
the figure is still "until the crashed actor's replacement answers".  Supervision policy:
the shipped backoff (100 ms doubling) applies only to a child that fails again within
``within_seconds`` of its last start; the first restart after a quiet period is immediate.
The bench sets ``within_seconds`` to ``--within`` (0.1 s) and crashes ``--pause`` (0.2 s)
apart, so every crash measures that immediate restart, never the deliberate backoff nor the
intensity limit.  After the crashes it waits for the
pipeline to drain and checks the invariants (every acknowledged write once in
``forum_events``, projections applied every event once, counters).  Not a test.
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

KINDS: dict[str, str] = {
    "intake": "root/forum/intake",
    "relay": "root/forum/relay",
    "consumer": "root/forum/consumer",
    "handler": "root/forum/handler",
    "broker": "root/forum/broker",
    "projection thread_views": "root/forum/projections/thread_views",
    "projection control_state": "root/forum/projections/control_state",
}
STATELESS = ("intake", "relay", "broker")


def find(node: dict[str, Any], path: str) -> dict[str, Any] | None:
    if node.get("path") == path:
        return node
    for child in node.get("children", ()):
        found = find(child, path)
        if found is not None:
            return found
    return None


class Prober:
    """One keep-alive connection for the polls (a new connection per poll costs ~1 ms)."""

    def __init__(self, port: int) -> None:
        self.conn = RawHttp("127.0.0.1", port)

    async def get(self, path: str) -> tuple[int, Any]:
        status, raw = await self.conn.request("GET", path)
        return status, json.loads(raw) if raw else None

    async def post(self, path: str, body: Any = None) -> tuple[int, bytes]:
        return await self.conn.request("POST", path, json.dumps(body).encode() if body is not None else b"")

    async def node(self, path: str) -> dict[str, Any] | None:
        _, data = await self.get("/api/v1/debug/actors")
        return find(data["actors"], path)


async def crash_once(probe: Prober, kind: str, path: str, timeout: float = 30.0) -> tuple[float, float]:
    """Crash ``path``; returns (seconds until the replacement answers, crash route round trip)."""
    before = await probe.node(path)
    if before is None or before["state"] != "running":
        raise SystemExit(f"{path} is not running before the crash: {before}")
    old_urn = before["urn"]
    started = time.perf_counter()
    status, raw = await probe.post(f"/api/v1/debug/actors/{path}/crash?reason=bench")
    route = time.perf_counter() - started
    if status != 200:
        raise SystemExit(f"crash route answered {status}: {raw[:300]!r} (is serve running with --debug?)")
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if kind == "intake":
            code, _ = await probe.post("/api/v1/forum/threads/fthr_does_not_exist/posts", {"body": "probe"})
            if code == 404:
                node = await probe.node(path)
                if node is not None and node["urn"] != old_urn:
                    return time.perf_counter() - started, route
                continue  # the old incarnation answered before it crashed
            if code != 503:
                raise SystemExit(f"intake probe answered {code}")
            continue
        node = await probe.node(path)
        if node is None or node["urn"] == old_urn or node["state"] != "running":
            continue
        if kind.startswith("projection"):
            name = path.rsplit("/", 1)[1]
            _, health = await probe.get("/api/v1/health")
            if health["worker"]["lag"]["projection_lag"].get(name, 1) != 0:
                continue
        return time.perf_counter() - started, route
    raise SystemExit(f"{path} did not come back within {timeout}s")


def background_load(port: int, rate: float, stop: threading.Event, acknowledged: list[dict[str, Any]],
                    errors: list[int]) -> None:
    async def run() -> None:
        conn = RawHttp("127.0.0.1", port)
        status, raw = await conn.request("POST", "/api/v1/forum/threads", json.dumps(
            {"ticket": "CRASH", "title": "load", "body": "start", "correlation_id": "crash-open"}).encode())
        if status != 200:
            raise SystemExit(f"opening the load thread answered {status}")
        acknowledged.append({"token": "crash-open", "status": 200})
        path = f"/api/v1/forum/threads/{json.loads(raw)['thread']['thread_id']}/posts"
        i = 0
        start = time.perf_counter()
        while not stop.is_set():
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            token = f"crash-{i}"
            i += 1
            try:
                status, raw = await conn.request("POST", path, json.dumps({"body": token, "correlation_id": token}).encode())
            except (ConnectionError, OSError):
                errors.append(0)
                continue
            if status == 200:
                acknowledged.append({"token": token, "status": 200})
            elif status == 202:
                acknowledged.append({"token": token, "status": 202, "event_id": json.loads(raw)["event_id"]})
            else:
                errors.append(status)  # 503 while the intake restarts: not acknowledged
        await conn.close()

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="crashes per actor kind (default 30)")
    parser.add_argument("--load", type=float, default=20.0, help="background writes/s (default 20; 0 = none)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list of kinds: " + ", ".join(KINDS))
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between crashes (default 0.2)")
    parser.add_argument("--within", type=float, default=0.1,
                        help="supervision.within_seconds (default 0.1; keep it below --pause)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"unknown kind {kind!r}")
    if args.within >= args.pause:
        parser.error("--within must be below --pause, or crashes would hit the restart backoff")
    supervision = {"max_restarts": 5, "within_seconds": args.within}
    results: dict[str, list[float]] = {}
    routes: list[float] = []
    acknowledged: list[dict[str, Any]] = []
    errors: list[int] = []
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url, supervision=supervision))
        stop = threading.Event()
        loader = None
        try:
            serve.start()
            machine = MachineLoad(serve.pid, redis_server.pid or 0)
            if args.load > 0:
                loader = threading.Thread(target=background_load,
                                          args=(serve.port, args.load, stop, acknowledged, errors), daemon=True)
                loader.start()
                time.sleep(1.0)

            async def crashes() -> None:
                probe = Prober(serve.port)
                for kind in kinds:
                    samples = results.setdefault(kind, [])
                    for _ in range(args.n):
                        took, route = await crash_once(probe, kind, KINDS[kind])
                        samples.append(took)
                        routes.append(route)
                        await asyncio.sleep(args.pause)
                await probe.conn.close()

            asyncio.run(crashes())
            stop.set()
            if loader is not None:
                loader.join(30)
            busy = machine.describe()
            drain = wait_caught_up(serve.db_path, timeout=120)
            found, bad = check_invariants(serve.db_path, acknowledged)
            serve_log = serve.log_tail(5)
        finally:
            stop.set()
            serve.stop()
            redis_server.stop()

    print(machine_facts())
    print(f"supervision: within_seconds {args.within:g} (restart immediate after a quiet period); background load {args.load:g} writes/s; "
          f"{args.n} crashes per kind, {args.pause:g} s apart")
    print()
    rows = [latency_row(f"{kind}{' (stateless)' if kind in STATELESS else ''}", samples)
            for kind, samples in results.items()]
    rows.append(latency_row("crash route round trip", routes))
    print(table(LATENCY_HEADERS, rows, title="crash -> replacement answers"))
    print()
    statuses: dict[int, int] = {}
    for code in errors:
        statuses[code] = statuses.get(code, 0) + 1
    print(f"background writes acknowledged: {len(acknowledged)}; refused or failed meanwhile: {statuses or 0} "
          f"(503 = intake restarting, 0 = connection error; not acknowledged, so not checked)")
    print(f"drain after the crashes: {drain * 1000:.0f} ms" if drain >= 0 else "NOT DRAINED within 120 s")
    print(busy)
    status = report_invariants("invariants:", found, bad)
    if status:
        print(serve_log)
    return status


if __name__ == "__main__":
    sys.exit(main())
