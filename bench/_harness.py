"""Shared plumbing for the bench scripts (not a benchmark itself).

Every script starts the real thing, the way an operator would: a private ``redis-server``
(:class:`metawsm.transport.redis_process.RedisProcess`) and a real ``metawsm serve``
subprocess (:class:`Serve`), both in a scratch directory, and talks to it over HTTP and
WebSocket only.  This module provides:

* :class:`Scratch` - a short ``/tmp/mwb-*`` directory, removed unless ``--keep``;
* :func:`policy` - the policy file the daemon is started with (SQLite stays ``FULL``);
* :class:`Serve` - start / stop / ``kill -9`` / restart ``metawsm serve``; CPU seconds from
  ``/proc/<pid>/stat``; :func:`proc_wakeups`, :func:`proc_rss_mb` and friends for a process at rest;
* :class:`RawHttp` - a tiny keep-alive HTTP/1.1 client on asyncio streams, so the load
  generator (on the same 2-core machine) spends as little CPU as possible per request;
* :func:`http` - a blocking one-shot request for set-up and polling;
* :func:`summarize` / :func:`table` - percentiles and a fixed-width table;
* :func:`check_invariants` - the reliability invariants of ``targets.md`` read from SQLite;
* :func:`machine_facts` - nproc, CPU model, Python, Redis and SQLite versions.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from metawsm.forum.ledger_retention import applied_above_floor  # noqa: E402 - after the path tweak
from metawsm.store import open_connection  # noqa: E402 - after the path tweak so a checkout runs as is
from metawsm.transport.redis_process import RedisProcess  # noqa: E402 - after the sys.path set-up above

if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))
from support.daemon import ServeProcess  # noqa: E402 - the tests' serve process, shared
from support.http import token_for  # noqa: E402 - finds the operator token as the CLI does

PROJECTIONS = ("thread_views", "thread_stats", "queue_view", "control_state")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- scratch, redis, serve ---------------------------------------------------------------------


class Scratch:
    """A scratch directory (short, so unix socket paths fit); removed on exit unless kept."""

    def __init__(self, keep: bool = False, prefix: str = "mwb-") -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.keep = keep

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.keep:
            print(f"(scratch directory kept: {self.path})")
        else:
            shutil.rmtree(self.path, ignore_errors=True)


def start_redis(scratch: Path, appendonly: bool = False) -> RedisProcess:
    server = RedisProcess(scratch / "redis", appendonly=appendonly)
    server.start()
    return server


def policy(redis_url: str, stream: str = "bench", *, supervision: dict[str, Any] | None = None,
           **forum: Any) -> dict[str, Any]:
    """The policy the bench daemon runs with: the given Redis, never an embedded one."""
    section: dict[str, Any] = {"redis": {"url": redis_url, "stream": stream, "group": stream, "embedded": "never"}}
    section.update(forum)
    data: dict[str, Any] = {"forum": section}
    if supervision:
        data["supervision"] = supervision
    return data


class Serve(ServeProcess):
    """The tests' ``metawsm serve`` subprocess, plus what the benches time and inspect."""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> float:
        """Spawn and wait for health 200; return the seconds it took."""
        started = time.perf_counter()
        self.spawn()
        self.wait_healthy(timeout)
        return time.perf_counter() - started

    def wait_healthy(self, timeout: float = 30.0, interval: float = 0.005) -> float:
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"metawsm serve exited with {self.process.returncode}; log tail:\n"
                                   + self.log_tail())
            if self.healthy():
                return time.perf_counter() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"metawsm serve on {self.url} not healthy after {timeout}s; log tail:\n"
                                   + self.log_tail())
            time.sleep(interval)

    def healthy(self) -> bool:
        try:
            status, _ = http(self.url, "GET", "/api/v1/health", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cpu_seconds(self) -> float:
        """user + system CPU of the serve process (all its threads), from /proc/<pid>/stat."""
        return proc_cpu_seconds(self.pid)


def end_run(serve: Serve, redis_server: RedisProcess, tmux_socket: str, run_id: str) -> None:
    """A run benchmark's teardown: stop and clean up its run (best effort), then its daemon,
    Redis and the run's tmux server."""
    if run_id:
        for action in ("stop", "cleanup"):
            try:
                http(serve.url, "POST", f"/api/v1/runs/{run_id}/{action}", {}, timeout=60)
            except OSError:
                pass
    serve.stop()
    redis_server.stop()
    subprocess.run(["tmux", "-L", tmux_socket, "kill-server"], capture_output=True)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        raw = handle.read().decode()
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_children_cpu_seconds(pid: int) -> float:
    """user + system CPU of the children ``pid`` has waited for (tmux, git subprocesses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def proc_wakeups(pid: int) -> int:
    """Context switches (voluntary + involuntary) summed over every thread of ``pid``: how
    often its threads went to sleep and were woken, or were preempted."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/status") as handle:
                for line in handle:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except OSError:
            continue  # the thread ended meanwhile
    return total


def _proc_status_field(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name + ":"):
                    return line.split()[1]
    except OSError:
        pass
    return "0"


def proc_rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (``VmRSS``)."""
    return int(_proc_status_field(pid, "VmRSS")) / 1024


def proc_threads(pid: int) -> int:
    return int(_proc_status_field(pid, "Threads"))


_TOKENS: dict[str, str] = {}


def token(base: str) -> str:
    """The operator token of the daemon at ``base`` (looked up once: benches never rotate it, and a
    restarted daemon keeps its token file)."""
    if base not in _TOKENS:
        _TOKENS[base] = token_for(base)
    return _TOKENS[base]


def auth(base: str) -> dict[str, str]:
    secret = token(base)
    return {"Authorization": f"Bearer {secret}"} if secret else {}


PUBLIC_PATHS = ("/api/v1/health", "/api/v1/auth")


def http(base: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    """One blocking request; returns (status, decoded JSON or text). Raises OSError when unreachable."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if path.partition("?")[0] not in PUBLIC_PATHS:
        headers.update(auth(base))
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# -- a cheap HTTP/1.1 client -------------------------------------------------------------------


class HttpClosed(ConnectionError):
    pass


class RawHttp:
    """One keep-alive HTTP/1.1 connection on asyncio streams (JSON bodies, Content-Length only).

    aiohttp's client costs several times more CPU per request; on a 2-core machine shared
    with the daemon that CPU is taken from the server being measured.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.authorization: str | None = None  # the header line, found on the first request

    async def connect(self) -> RawHttp:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = self.reader = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if self.authorization is None:
            self.authorization = "".join(f"{k}: {v}\r\n" for k, v in auth(f"http://{self.host}:{self.port}").items())
        head += self.authorization
        if body is not None or method != "GET":
            body = body or b""
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        try:
            status_line = await self.reader.readuntil(b"\r\n")
            headers = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            await self.close()
            raise HttpClosed(f"connection closed before a response: {error}") from None
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        close = False
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value.strip())
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        try:
            payload = await self.reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            await self.close()
            raise HttpClosed("connection closed inside a response body") from None
        if close:
            await self.close()
        return status, payload


class Pool:
    """Keep-alive connections handed out one request at a time; grows up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[RawHttp] = []
        self.size = 0
        self.freed = asyncio.Condition()

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        conn = await self._take()
        try:
            return await conn.request(method, path, body)
        except (ConnectionError, OSError):
            await conn.close()
            raise
        finally:
            self.idle.append(conn)
            async with self.freed:
                self.freed.notify()

    async def _take(self) -> RawHttp:
        while True:
            if self.idle:
                return self.idle.pop()
            if self.size < self.limit:
                self.size += 1
                return await RawHttp(self.host, self.port).connect()
            async with self.freed:
                await self.freed.wait()

    async def close(self) -> None:
        for conn in self.idle:
            await conn.close()


# -- figures -----------------------------------------------------------------------------------


# -- machine load ------------------------------------------------------------------------------


def _busy_jiffies() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of all CPUs since boot."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8]), fields[7]


def _pid_jiffies(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode()
    except OSError:
        return 0
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])


class MachineLoad:
    """CPU the rest of the machine used meanwhile: busy jiffies minus our own processes', and
    the hypervisor's steal.

    The bench machine may be shared (another test run, say) and is a VM whose host takes CPU
    time away now and then (steal); figures taken meanwhile are not comparable (steal of
    10-30 % multiplies the write latency several times), so every script prints this next to
    its figures.
    """

    def __init__(self, *pids: int) -> None:
        self.pids = [os.getpid(), *pids]
        self.reset()

    def reset(self) -> None:
        self._busy, self._total, self._steal = _busy_jiffies()
        self._ours = sum(_pid_jiffies(p) for p in self.pids)

    def shares(self) -> tuple[float, float]:
        """(other processes, hypervisor steal) as shares of all CPUs since reset (0..1)."""
        busy, total, steal = _busy_jiffies()
        ours = sum(_pid_jiffies(p) for p in self.pids)
        span = max(1, total - self._total)
        others = max(0.0, (busy - self._busy) - (steal - self._steal) - (ours - self._ours)) / span
        return others, (steal - self._steal) / span

    def others_share(self) -> float:
        return self.shares()[0]

    def describe(self) -> str:
        others, steal = self.shares()
        note = "  (WARNING: the machine was busy or the host stole CPU; figures are not representative)" \
            if others > 0.10 or steal > 0.03 else ""
        return (f"other processes used {others * 100:.0f}% of the machine's CPUs meanwhile, "
                f"hypervisor steal {steal * 100:.1f}%{note}")


def wait_quiet(max_wait: float = 60.0, threshold: float = 0.10) -> float:
    """Wait (up to ``max_wait`` s) until others use under ``threshold`` of the CPUs for 2 s."""
    deadline = time.monotonic() + max_wait
    while True:
        load = MachineLoad()
        time.sleep(2.0)
        others, steal = load.shares()
        if (others < threshold and steal < threshold / 3) or time.monotonic() > deadline:
            return others


def percentile(ordered: Sequence[float], p: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summarize(seconds: Iterable[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan"),
                "mean": float("nan")}
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 50) * 1000,
        "p95": percentile(ordered, 95) * 1000,
        "p99": percentile(ordered, 99) * 1000,
        "max": ordered[-1] * 1000,
        "mean": sum(ordered) / len(ordered) * 1000,
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "", left: bool = False) -> str:
    """A fixed-width table; numbers right-aligned (``left``: every column left-aligned)."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if value != value else f"{value:.2f}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(title)
    def fmt(i: int, v: str, w: int) -> str:
        return v.ljust(w) if left or i == 0 else v.rjust(w)

    lines.append("  ".join(fmt(i, h, w) for i, (h, w) in enumerate(zip(headers, widths))).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    for row in text:
        lines.append("  ".join(fmt(i, v, w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def latency_row(name: str, seconds: Iterable[float]) -> list[Any]:
    s = summarize(seconds)
    return [name, s["n"], s["p50"], s["p95"], s["p99"], s["max"], s["mean"]]


LATENCY_HEADERS = ["measurement", "n", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms"]


def machine_facts(redis_server: RedisProcess | None = None) -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = "?"
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        redis_version = out.split("v=", 1)[1].split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return (f"machine: nproc {os.cpu_count()}, cpu {model!r}, python {platform.python_version()}, "
            f"redis {redis_version}, sqlite {sqlite3.sqlite_version}")


# -- invariants --------------------------------------------------------------------------------


def projections_caught_up(db_path: Path) -> bool:
    """No pending outbox row and every projection applied every event (above the ledger floor:
    retention deletes the ledger rows of older events)."""
    conn = open_connection(db_path, read_only=True)
    try:
        pending = conn.execute("SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'").fetchone()[0]
        _, events, applied = applied_above_floor(conn)
    finally:
        conn.close()
    return not pending and all(applied.get(p, (0, 0))[0] == events for p in PROJECTIONS)


def wait_caught_up(db_path: Path, timeout: float = 120.0) -> float:
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while not projections_caught_up(db_path):
        if time.monotonic() > deadline:
            return -1.0
        time.sleep(0.05)
    return time.perf_counter() - started


def report_invariants(heading: str, found: Sequence[str], bad: Sequence[str], ok_line: str = "OK") -> int:
    """Print what the checks found and any violation; the script's exit status (1 on violation)."""
    print(heading)
    for line in found:
        print(f"  {line}")
    if bad:
        print(f"VIOLATIONS ({len(bad)}):")
        for line in bad:
            print(f"  {line}")
        return 1
    print(f"  {ok_line}")
    return 0


def check_invariants(db_path: Path, acknowledged: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Check the reliability invariants; returns (what was found, violations).

    ``acknowledged``: one dict per write the server answered 200/202, with ``token`` (the
    write's unique ``correlation_id``), ``status`` and, for a 202, ``event_id``.
    """
    found: list[str] = []
    bad: list[str] = []
    conn = open_connection(db_path, read_only=True)
    try:
        events = conn.execute("SELECT COUNT(*) FROM forum_events").fetchone()[0]
        max_seq = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        found.append(f"forum_events: {events} rows, max sequence {max_seq}")
        if events != max_seq:
            bad.append(f"forum_events sequence is not gap-free: {events} rows, max sequence {max_seq}")
        by_token = dict(conn.execute(
            "SELECT correlation_id, COUNT(*) FROM forum_events GROUP BY correlation_id").fetchall())
        ids = {row[0] for row in conn.execute("SELECT event_id FROM forum_events")}
        missing = duplicated = 0
        for write in acknowledged:
            count = by_token.get(write["token"], 0)
            if count == 0:
                missing += 1
                if missing <= 10:
                    bad.append(f"acknowledged write {write['token']} ({write['status']}) is not in forum_events")
            elif count > 1:
                duplicated += 1
                if duplicated <= 10:
                    bad.append(f"acknowledged write {write['token']} is in forum_events {count} times")
            event_id = write.get("event_id")
            if event_id and event_id not in ids:
                bad.append(f"202 event_id {event_id} ({write['token']}) is not in forum_events")
        accepted = sum(1 for w in acknowledged if w["status"] == 202)
        found.append(f"acknowledged writes: {len(acknowledged)} ({accepted} answered 202); "
                     f"missing {missing}, duplicated {duplicated}")
        if missing > 10 or duplicated > 10:
            bad.append(f"... {missing} missing and {duplicated} duplicated acknowledged writes in all")

        # Retention deletes the ledger rows of old events and moves the floor past them: exactly
        # once means one row per event above it (with a floor of 0, every event).
        floor, above, ledger = applied_above_floor(conn, distinct=True)
        if floor:
            found.append(f"ledger floor {floor}: {above} events above it")
        checkpoints = dict(conn.execute(
            "SELECT projection_name, last_sequence FROM forum_projection_checkpoints").fetchall())
        foreign = conn.execute(
            "SELECT COUNT(*) FROM forum_projection_events p WHERE NOT EXISTS"
            " (SELECT 1 FROM forum_events e WHERE e.event_id = p.event_id)").fetchone()[0]
        for name in PROJECTIONS:
            count, distinct = ledger.get(name, (0, 0))
            found.append(f"projection {name}: ledger {count} rows ({distinct} distinct), "
                         f"checkpoint {checkpoints.get(name, 0)}")
            if count != above or distinct != count:
                bad.append(f"projection {name} applied {count} ledger rows ({distinct} distinct) for {above} events"
                           + (f" above the ledger floor {floor}" if floor else ""))
            if checkpoints.get(name, 0) != max_seq:
                bad.append(f"projection {name} checkpoint {checkpoints.get(name, 0)} != max sequence {max_seq}")
        if foreign:
            bad.append(f"{foreign} forum_projection_events rows name an event that is not in forum_events")

        wrong_counts = conn.execute(
            "SELECT v.thread_id, v.posts_count, (SELECT COUNT(*) FROM forum_posts p WHERE p.thread_id = v.thread_id)"
            " AS recount FROM forum_thread_views v WHERE v.posts_count !="
            " (SELECT COUNT(*) FROM forum_posts p WHERE p.thread_id = v.thread_id)").fetchall()
        threads = conn.execute("SELECT COUNT(*) FROM forum_threads").fetchone()[0]
        views = conn.execute("SELECT COUNT(*) FROM forum_thread_views").fetchone()[0]
        posts = conn.execute("SELECT COUNT(*) FROM forum_posts").fetchone()[0]
        found.append(f"threads {threads}, thread views {views}, posts {posts}; "
                     f"views whose posts_count != recount: {len(wrong_counts)}")
        if views != threads:
            bad.append(f"{threads} threads in the write model but {views} thread views")
        for thread_id, count, recount in wrong_counts[:10]:
            bad.append(f"thread {thread_id}: posts_count {count} but forum_posts holds {recount}")
        mismatched = conn.execute(
            "SELECT COUNT(*) FROM forum_thread_views v JOIN forum_threads t USING (thread_id)"
            " WHERE v.state != t.state OR v.priority != t.priority OR v.last_event_sequence != t.version").fetchone()[0]
        if mismatched:
            bad.append(f"{mismatched} thread views disagree with the write model (state/priority/last sequence)")
        stats = dict(((r[0], r[1], r[2], r[3]), r[4]) for r in conn.execute(
            "SELECT ticket, run_id, state, priority, thread_count FROM forum_thread_stats"))
        recount = dict(((r[0], r[1], r[2], r[3]), r[4]) for r in conn.execute(
            "SELECT ticket, run_id, state, priority, COUNT(*) FROM forum_threads GROUP BY 1, 2, 3, 4"))
        found.append(f"thread_stats keys {len(stats)}, recount keys {len(recount)}")
        if stats != recount:
            diff = [k for k in set(stats) | set(recount) if stats.get(k) != recount.get(k)]
            bad.append(f"thread_stats differs from a recount of forum_threads on {len(diff)} key(s), e.g. "
                       f"{diff[0]}: {stats.get(diff[0])} vs {recount.get(diff[0])}")
        parked = conn.execute("SELECT COUNT(*) FROM forum_parked_messages WHERE replayed_at IS NULL").fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM forum_outbox WHERE status = 'pending'").fetchone()[0]
        found.append(f"outbox pending {pending}, parked messages {parked}")
        if pending:
            bad.append(f"{pending} outbox rows still pending")
        if parked:
            bad.append(f"{parked} parked messages")
    finally:
        conn.close()
    return found, bad
