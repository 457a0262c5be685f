# Run:  .venv/bin/python bench/fanout.py                       # 1,000 clients x 20 events/s
#       .venv/bin/python bench/fanout.py --clients 100 --rate 20 --duration 10
"""WebSocket fan-out: N stream clients x M events/s, server CPU, client latency, one stalled client.

Starts a private ``redis-server`` and a real ``metawsm serve`` in a scratch directory, then
``--clients`` WebSocket clients (``/api/v1/forum/stream?ticket=FANOUT``) spread over
``--client-procs`` processes.  The writer posts ``--rate`` events/s; each post's
``correlation_id`` carries its send time (wall clock, same machine), so every client
computes, for every frame it receives, **POST sent -> frame received** per event.

Phase 1 (``--duration`` s): all clients read; server CPU share (``/proc/<pid>/stat``, % of one
core) and client latency percentiles.

Phase 2: one more client connects and never reads (tiny receive buffer).  Writes continue at
the same rate for as long as phase 1, and at least until the server closes the stalled client
(``metawsm_websocket_slow_closed_total`` goes up: its socket stopped taking frames for 5 s once
the buffers were full, ~20 s at 20 events/s; or it fell 1,000 frames behind) or
``--stall-timeout`` passes; the other clients' latency in that phase is compared with phase 1.
As soon as it is closed, the stalled client reads what it was sent and must find the close
frame with code 1013.

The p99 of a 30 s phase is decided by its few worst seconds (a GC pause, a burst of
hypervisor steal), so the script also prints each phase's per-second p99s and compares
their medians.  Every client also checks that no sequence arrives twice on its connection.
Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import re
import socket
import statistics
import struct
import sys
import time
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    MachineLoad,
    Pool,
    Scratch,
    Serve,
    auth,
    http,
    latency_row,
    machine_facts,
    policy,
    start_redis,
    table,
)

TICKET = "FANOUT"
STREAM = f"/api/v1/forum/stream?ticket={TICKET}"
TOKEN = re.compile(r'"correlation_id":"fo-(\d+)-\d+-(\d+)"')
SEQUENCE = re.compile(r'"sequence":(\d+)')


# -- client processes ---------------------------------------------------------------------------


def client_process(index: int, count: int, url: str, ready: Any, results: Any, stop: Any) -> None:
    asyncio.run(_client_main(index, count, url, ready, results, stop))


async def _client_main(index: int, count: int, url: str, ready: Any, results: Any, stop: Any) -> None:
    import aiohttp

    latencies: dict[int, Any] = {}  # phase -> array of latencies (s)
    arrivals: dict[int, Any] = {}  # phase -> array of arrival times (wall clock)
    duplicates = 0
    frames = 0
    closed_early = 0
    caught_up = asyncio.Event()
    pending = count

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal duplicates, frames, closed_early, pending
        ws = await session.ws_connect(url + STREAM, max_msg_size=0, autoping=True, headers=auth(url))
        last = 0
        seen_ready = False
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            now = time.time()
            data = message.data
            if not seen_ready and data.startswith('{"type":"heartbeat"'):
                seen_ready = True
                pending -= 1
                if pending == 0:
                    caught_up.set()
                continue
            if not data.startswith('{"type":"forum.events"'):
                continue
            frames += 1
            for match in SEQUENCE.finditer(data):
                sequence = int(match.group(1))
                if sequence <= last:
                    duplicates += 1
                last = sequence
            for match in TOKEN.finditer(data):
                phase = int(match.group(1))
                if phase not in latencies:
                    latencies[phase], arrivals[phase] = array("d"), array("d")
                latencies[phase].append(now - int(match.group(2)) / 1e9)
                arrivals[phase].append(now)
        if not stop.is_set():
            closed_early += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = []
        for start in range(0, count, 50):  # connect in waves, not 500 handshakes at once
            tasks += [asyncio.create_task(one(session)) for _ in range(min(50, count - start))]
            await asyncio.sleep(0.05)
        await asyncio.wait_for(caught_up.wait(), 120)
        ready.put(index)
        while not stop.is_set():
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)  # frames still in flight for the last writes
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    results.put({"index": index, "latencies": {k: v.tolist() for k, v in latencies.items()},
                 "arrivals": {k: v.tolist() for k, v in arrivals.items()}, "duplicates": duplicates,
                 "frames": frames, "closed_early": closed_early})


# -- the stalled client -------------------------------------------------------------------------


def stalled_websocket(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {STREAM}&limit=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("connection closed during the WebSocket handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"WebSocket handshake refused: {head[:200]!r}")
    return sock, head.split(b"\r\n\r\n", 1)[1]


def close_code_after_reading(sock: socket.socket, data: bytes) -> tuple[int | None, int]:
    """Read until the close frame; returns (close code, frames read before it)."""
    sock.settimeout(10)
    frames = 0
    while True:
        index = 0
        while index + 2 <= len(data):
            opcode, length, start = data[index] & 0x0F, data[index + 1] & 0x7F, index + 2
            if length == 126:
                if start + 2 > len(data):
                    break
                (length,), start = struct.unpack(">H", data[start:start + 2]), start + 2
            elif length == 127:
                if start + 8 > len(data):
                    break
                (length,), start = struct.unpack(">Q", data[start:start + 8]), start + 8
            if start + length > len(data):
                break
            if opcode == 0x8:
                code = struct.unpack(">H", data[start:start + 2])[0] if length >= 2 else None
                return code, frames
            frames += 1
            index = start + length
        data = data[index:]
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, TimeoutError, OSError):
            return None, frames
        if not chunk:
            return None, frames
        data += chunk


def slow_closed(url: str) -> int:
    status, text = http(url, "GET", "/metrics")
    for line in str(text).splitlines():
        if line.startswith("metawsm_websocket_slow_closed_total "):
            return int(float(line.split()[1]))
    return 0


# -- the writer ---------------------------------------------------------------------------------


async def write_phase(pool: Pool, path: str, phase: int, rate: float, until: Any, counter: list[int]) -> int:
    """Post at ``rate`` (open loop: each post is sent at its due time on a free connection)
    until ``until()`` is true; returns the number of posts."""
    interval = 1.0 / rate
    start = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    failures: list[str] = []

    async def post(token: str) -> None:
        status, raw = await pool.request("POST", path, json.dumps({"body": "fan-out", "correlation_id": token}).encode())
        if status not in (200, 202):
            failures.append(f"a write answered {status}: {raw[:200]!r}")

    i = 0
    while not until():
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        token = f"fo-{phase}-{counter[0]}-{time.time_ns()}"
        counter[0] += 1
        tasks.append(asyncio.create_task(post(token)))
        i += 1
    await asyncio.gather(*tasks)
    if failures:
        raise SystemExit(failures[0])
    return i


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients (default 1000)")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second (default 20)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each phase (default 30)")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--stall-timeout", type=float, default=180.0, help="max seconds of phase 2")
    parser.add_argument("--no-stall", action="store_true", help="skip phase 2")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    context = multiprocessing.get_context("fork")
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url))
        workers: list[Any] = []
        stop = context.Event()
        try:
            serve.start()
            status, body = http(serve.url, "POST", "/api/v1/forum/threads",
                                {"ticket": TICKET, "title": "fan-out", "body": "start"})
            if status != 200:
                raise SystemExit(f"opening the thread answered {status}: {body}")
            thread_id = body["thread"]["thread_id"]
            ready, results = context.Queue(), context.Queue()
            share = [args.clients // args.client_procs + (1 if i < args.clients % args.client_procs else 0)
                     for i in range(args.client_procs)]
            for index, count in enumerate(share):
                process = context.Process(target=client_process, args=(index, count, serve.url, ready, results, stop),
                                          daemon=True)
                process.start()
                workers.append(process)
            started = time.perf_counter()
            for _ in workers:
                ready.get(timeout=180)
            connect_s = time.perf_counter() - started
            outcome = asyncio.run(run_phases(args, serve, thread_id, [redis_server.pid or 0] + [w.pid for w in workers]))
            stop.set()
            gathered = [results.get(timeout=60) for _ in workers]
        finally:
            stop.set()
            for process in workers:
                process.join(10)
                if process.is_alive():
                    process.kill()
            serve.stop()
            redis_server.stop()

    latencies: dict[int, list[float]] = {}
    per_second: dict[int, dict[int, list[float]]] = {}
    duplicates = sum(g["duplicates"] for g in gathered)
    closed_early = sum(g["closed_early"] for g in gathered)
    for g in gathered:
        for phase, values in g["latencies"].items():
            latencies.setdefault(int(phase), []).extend(values)
    for phase in latencies:
        start = min(min(g["arrivals"].get(phase, [float("inf")]), default=float("inf")) for g in gathered)
        buckets = per_second.setdefault(phase, {})
        for g in gathered:
            for at, value in zip(g["arrivals"].get(phase, ()), g["latencies"].get(phase, ())):
                buckets.setdefault(int(at - start), []).append(value)

    def second_p99s(phase: int) -> list[float]:
        return [sorted(b)[int(0.99 * (len(b) - 1))] * 1000 for _, b in sorted(per_second.get(phase, {}).items())]
    print(machine_facts())
    print(f"{args.clients} WebSocket clients in {args.client_procs} processes (connected and caught up in "
          f"{connect_s:.1f} s), {args.rate:g} events/s")
    print()
    rows = [latency_row(f"phase 1: {args.clients} clients reading", latencies.get(1, []))]
    if 2 in latencies:
        rows.append(latency_row("phase 2: + 1 stalled client", latencies[2]))
    print(table(LATENCY_HEADERS, rows, title="POST sent -> frame received, per client and event"))
    print()
    p1 = outcome["phase1"]
    facts = [
        ["phase 1 events posted", f"{p1['posted']} in {p1['seconds']:.1f} s ({p1['posted'] / p1['seconds']:.1f}/s)"],
        ["phase 1 serve CPU (of one core)", f"{p1['cpu'] * 100:.1f}%"],
        ["phase 1 frames expected / received", f"{p1['posted'] * args.clients} / "
                                                f"{len(latencies.get(1, []))}"],
    ]
    if "phase2" in outcome:
        p2 = outcome["phase2"]
        base = sorted(latencies.get(1, []))
        stalled = sorted(latencies.get(2, []))
        change = "n/a"
        if base and stalled:
            q1 = base[min(len(base) - 1, int(round(0.99 * (len(base) - 1))))]
            q2 = stalled[min(len(stalled) - 1, int(round(0.99 * (len(stalled) - 1))))]
            change = f"{(q2 - q1) / q1 * 100:+.1f}%"
        s1, s2 = second_p99s(1), second_p99s(2)
        robust = "n/a"
        if s1 and s2:
            m1, m2 = statistics.median(s1), statistics.median(s2)
            robust = f"{(m2 - m1) / m1 * 100:+.1f}% ({m1:.1f} -> {m2:.1f} ms)"
        facts += [
            ["phase 2 events posted", f"{p2['posted']} in {p2['seconds']:.1f} s"],
            ["phase 2 serve CPU (of one core)", f"{p2['cpu'] * 100:.1f}%"],
            ["stalled client closed by the server", f"{p2['closed']} after {p2['closed_after']:.1f} s"
                                                    if p2["closed"] else "NO (timeout)"],
            ["stalled client's close code", f"{p2['close_code']} (read {p2['stalled_frames']} frames first)"],
            ["other clients' p99 change", change],
            ["  median of per-second p99s", robust],
            ["  per-second p99 ms, phase 1", " ".join(f"{v:.0f}" for v in s1)],
            ["  per-second p99 ms, phase 2", " ".join(f"{v:.0f}" for v in s2)],
        ]
    facts += [
        ["duplicate sequences on a connection", str(duplicates)],
        ["clients closed before the end", str(closed_early)],
        ["machine", outcome["machine"]],
    ]
    print(table(["figure", "value"], facts, left=True))
    failed = duplicates or closed_early or ("phase2" in outcome and outcome["phase2"]["close_code"] != 1013)
    return 1 if failed else 0


async def run_phases(args: argparse.Namespace, serve: Serve, thread_id: str, pids: list[int]) -> dict[str, Any]:
    pool = Pool("127.0.0.1", serve.port, 16)
    path = f"/api/v1/forum/threads/{thread_id}/posts"
    counter = [0]
    outcome: dict[str, Any] = {}
    load = MachineLoad(serve.pid, *pids)  # clients are ours too
    await write_phase(pool, path, 0, args.rate, _after(2.0), counter)  # warm-up, not measured
    load.reset()
    cpu0, t0 = serve.cpu_seconds(), time.perf_counter()
    posted = await write_phase(pool, path, 1, args.rate, _after(args.duration), counter)
    seconds = time.perf_counter() - t0
    outcome["phase1"] = {"posted": posted, "seconds": seconds, "cpu": (serve.cpu_seconds() - cpu0) / seconds}
    if not args.no_stall:
        before = slow_closed(serve.url)
        sock, early = stalled_websocket(serve.port)
        cpu0, t0 = serve.cpu_seconds(), time.perf_counter()
        state: dict[str, Any] = {"closed": False, "checked": 0.0}
        deadline = t0 + args.stall_timeout

        result: dict[str, Any] = {}

        def closed() -> bool:
            now = time.perf_counter()
            if not state["closed"] and now - state["checked"] >= 0.5:
                state["checked"] = now
                state["closed"] = slow_closed(serve.url) > before
                if state["closed"]:
                    state["closed_after"] = now - t0
                    # Read at once (the server cuts a peer that does not read 10 s after closing).
                    result["reader"] = asyncio.get_running_loop().run_in_executor(
                        None, close_code_after_reading, sock, early)
            # Same length as phase 1 (a fair p99 comparison), and at least until it was closed.
            return (state["closed"] and now - t0 >= args.duration) or now > deadline

        posted = await write_phase(pool, path, 2, args.rate, closed, counter)
        seconds = time.perf_counter() - t0
        cpu = (serve.cpu_seconds() - cpu0) / seconds
        if "reader" in result:
            code, frames = await result["reader"]
        else:
            code, frames = await asyncio.get_running_loop().run_in_executor(None, close_code_after_reading, sock, early)
        sock.close()
        outcome["phase2"] = {"posted": posted, "seconds": seconds, "cpu": cpu, "closed": state["closed"],
                             "closed_after": state.get("closed_after", seconds), "close_code": code,
                             "stalled_frames": frames}
    await pool.close()
    outcome["machine"] = load.describe()
    return outcome


def _after(seconds: float) -> Any:
    end = time.perf_counter() + seconds
    return lambda: time.perf_counter() >= end


if __name__ == "__main__":
    sys.exit(main())
