# Run:  .venv/bin/python bench/history.py [--commands 1000000] [--posts-per-thread 10] [--reads-only] [--prune]
"""Start-up and reads with a long history: ``serve`` to healthy and ``forum list`` p99 at 1M (5M) commands.

Builds a migrated SQLite file holding ``--commands`` commands of history the way the pipeline
leaves it, with direct SQL inserts (a recursive CTE per table, so 1M commands take about a
minute): threads of ``--posts-per-thread`` commands (one ``open_thread``, then ``add_post``),
each command with its ``forum_outbox`` row (sent), its verdict, its event, the event's outbox
row (sent), four ledger rows, and the read models (thread views, queue view, stats, search)
and checkpoints of a fully applied pipeline.  The history is spread over the last
``--history-days`` days.  Then, for each of two variants, ``--starts`` times:

* **no decided floor**: the ``forum_marks`` row is deleted first, so the handler's start-up floor
  query and the relay's reconcile scan every command row, as every start did before the floor
  was persisted (the handler persists it during that start);
* **decided floor**: the row is there, as the handler leaves it.

it starts ``metawsm serve`` on the file and measures, from spawn: health 200 with status ``ok``,
and the first write answered 200 (it waits for the reconcile queued ahead of it in the relay).
Retention is set long here (nothing is pruned while starting).  With the last daemon up it
measures ``GET /api/v1/forum/threads`` (``--reads`` times, one HTTP request each) and the whole
``metawsm forum list`` process (``--cli`` times).

Before starting anything it measures the reads in process (``ForumReader`` on a read-only
connection, ``--reads`` times each, after one warm-up): the 50 newest threads, search for a word
every thread holds (``history``, in every title; ``fix``, in every post), both, a word one thread in
1,000 holds (``777``), a word none holds, the second page of the common search, a common word with
a rare one, and a prefix every post matches (the worst cases); and the
bytes per thread by table and index (``dbstat``), with the part retention can delete (the
``forum_outbox`` rows and their indexes) shown apart.  ``--reads-only`` stops there.

The loader does not go through the actors, the intake, Redis or the projections' code: it writes
the rows they would leave behind (same tables, same columns, payloads of the same shape), so it
measures reads, sizes and start-up on a history of that shape, not the write path.  The Redis
streams are empty (as after trimming); nothing in the file is pending.

``--prune`` then starts it with the default retention (7 days) and a 5 s sweep, writes at a
paced ``--rate`` meanwhile, and reports how long the first sweep took, how many rows it deleted,
and the write latency before and during the sweep.  Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    MachineLoad,
    Scratch,
    Serve,
    http,
    latency_row,
    machine_facts,
    policy,
    start_redis,
    table,
)
from metawsm.store import open_connection
from metawsm.store.migrations import migrate

PROJECTIONS = ("thread_views", "thread_stats", "queue_view", "control_state")
TICKETS = 1000
FILLER = ("we looked at the failing step again and the fix is in the branch; the tests pass locally and "
          "the review notes are in the ticket")


def ts(us: str) -> str:
    """SQL for the RFC 3339 text (microseconds, as the app writes) of Unix microseconds ``us``."""
    return f"(strftime('%Y-%m-%dT%H:%M:%S', ({us}) / 1000000, 'unixepoch') || printf('.%06dZ', ({us}) % 1000000))"


def build_history(db_path: Path, commands: int, per_thread: int, history_days: float, search: bool) -> float:
    """Write the history into a freshly migrated file; returns the seconds it took."""
    started = time.perf_counter()
    conn = open_connection(db_path, synchronous="OFF")
    migrate(conn)
    conn.close()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -1000000", "temp_store = MEMORY"):
        conn.execute(f"PRAGMA {pragma}")
    now_us = int(time.time() * 1_000_000) - 3_600_000_000  # the newest history is an hour old
    start_us = now_us - int(history_days * 86_400 * 1_000_000)
    step = max(1, (now_us - start_us) // commands)
    p = per_thread
    conn.execute("BEGIN")
    conn.execute(
        "CREATE TEMP TABLE h AS WITH RECURSIVE n(c) AS (SELECT 0 UNION ALL SELECT c + 1 FROM n WHERE c < ?)"
        f" SELECT c, c / {p} AS t, c % {p} AS k, {start_us} + c * {step} AS us,"
        f" {start_us} + ((c / {p}) * {p} + {p} - 1) * {step} AS last_us FROM n", (commands - 1,))
    conn.execute(
        "CREATE TEMP TABLE hx AS SELECT c, t, k,"
        f" {ts('us')} AS at, {ts('last_us')} AS last_at,"
        " printf('fthr_h%025d', t) AS thread, printf('fevt_h%025d', c) AS ev, printf('fpst_h%025d', c) AS post,"
        f" printf('HIST-%d', t % {TICKETS}) AS ticket,"
        " CASE k % 2 WHEN 0 THEN 'agent' ELSE 'human' END AS actor_type,"
        " CASE k % 2 WHEN 0 THEN 'agent-' || (t % 7) ELSE 'operator' END AS actor_name,"
        " printf('history thread %d: the build of ticket %d fails on step %d', t, t % 1000, t % 13) AS title,"
        f" printf('post %d of thread %d: %s', k, t, '{FILLER}') AS body,"
        " CASE k WHEN 0 THEN 'forum.thread.opened' ELSE 'forum.post.added' END AS event_type FROM h")
    envelope = ("json_object('event_id', ev, 'event_type', event_type, 'occurred_at', at, 'thread_id', thread,"
                " 'ticket', ticket, 'actor_type', actor_type, 'actor_name', actor_name, 'correlation_id', ev)")
    event_payload = ("CASE k WHEN 0 THEN json_object('type', 'forum.thread.opened', 'title', title, 'body', body,"
                     " 'priority', 'normal', 'state', 'new', 'post_id', post, 'is_control', json('false'))"
                     " ELSE json_object('type', 'forum.post.added', 'post_id', post, 'body', body) END")
    command_body = ("CASE k WHEN 0 THEN json_object('type', 'open_thread', 'title', title, 'body', body,"
                    " 'priority', 'normal', 'post_id', post)"
                    " ELSE json_object('type', 'add_post', 'body', body, 'post_id', post) END")
    command_name = "CASE k WHEN 0 THEN 'open_thread' ELSE 'add_post' END"
    last_seq = f"(t * {p} + {p})"
    last_type = f"CASE ({p} - 1) % 2 WHEN 0 THEN 'agent' ELSE 'human' END"
    statements = [
        "INSERT INTO forum_threads (thread_id, ticket, run_id, agent_name, title, state, priority, assignee_type,"
        " assignee_name, opened_by_type, opened_by_name, is_control, content_hash, version, opened_at, updated_at)"
        f" SELECT thread, ticket, '', '', title, 'new', 'normal', '', '', 'agent', actor_name, 0,"
        f" lower(hex(randomblob(32))), {last_seq}, at, last_at FROM hx WHERE k = 0",
        "INSERT INTO forum_posts (post_id, thread_id, event_id, author_type, author_name, body, created_at)"
        " SELECT post, thread, ev, actor_type, actor_name, body, at FROM hx",
        "INSERT INTO forum_events (sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id,"
        " ticket, agent_name, actor_type, actor_name, correlation_id, causation_id, payload_json)"
        f" SELECT c + 1, ev, event_type, 1, at, thread, '', ticket, '', actor_type, actor_name, ev, '', {event_payload}"
        " FROM hx",
        "INSERT INTO forum_command_results (event_id, command_type, thread_id, status, error_code, error_message,"
        f" sequence, decided_at) SELECT ev, {command_name}, thread, 'applied', '', '', c + 1, at FROM hx",
        "INSERT INTO forum_outbox (id, message_id, topic, message_key, payload_json, status, attempt_count,"
        " last_error, created_at, updated_at, sent_at)"
        f" SELECT 2 * c + 1, printf('fmsg_c%025d', c), 'forum.commands.' || {command_name}, thread,"
        f" json_object('type', 'command', 'envelope', {envelope}, 'command', {command_body}),"
        " 'sent', 1, '', at, at, at FROM hx",
        "INSERT INTO forum_outbox (id, message_id, topic, message_key, payload_json, status, attempt_count,"
        " last_error, created_at, updated_at, sent_at)"
        " SELECT 2 * c + 2, printf('fmsg_e%025d', c), 'forum.events.' || substr(event_type, 7), thread,"
        f" json_object('type', 'event', 'sequence', c + 1, 'envelope', {envelope}, 'payload', {event_payload}),"
        " 'sent', 1, '', at, at, at FROM hx",
        "INSERT INTO forum_thread_views (thread_id, ticket, run_id, agent_name, title, state, priority, assignee_type,"
        " assignee_name, opened_by_type, opened_by_name, is_control, posts_count, last_post_at, last_post_by_type,"
        " last_post_by_name, last_event_sequence, last_actor_type, opened_at, updated_at)"
        f" SELECT thread, ticket, '', '', title, 'new', 'normal', '', '', 'agent', actor_name, 0, {p}, last_at,"
        f" {last_type}, 'operator', {last_seq}, {last_type}, at, last_at FROM hx WHERE k = 0",
        "INSERT INTO forum_thread_queue_view (thread_id, ticket, run_id, agent_name, state, priority, assignee_name,"
        " last_event_sequence, last_actor_type, needs_answer, updated_at)"
        f" SELECT thread, ticket, '', '', 'new', 'normal', '', {last_seq}, {last_type}, 0, last_at FROM hx WHERE k = 0",
        "INSERT INTO forum_thread_stats (ticket, run_id, state, priority, thread_count)"
        " SELECT ticket, '', 'new', 'normal', COUNT(*) FROM forum_thread_views GROUP BY ticket",
    ]
    statements += [f"INSERT INTO forum_projection_events (projection_name, event_id, applied_at) SELECT '{name}', ev, at"
                    " FROM hx" for name in PROJECTIONS]
    if search:
        # keyed as the thread_views projection keys them (migration 12): the thread's key is the
        # sequence of its opening event, a post's rowid is key << 24 plus its number in the thread
        statements.append("INSERT INTO forum_search_threads (search_key, thread_id)"
                          f" SELECT t * {p} + 1, thread FROM hx WHERE k = 0")
        # contentless since migration 13: only rowid, title and body
        statements.append("INSERT INTO forum_search (rowid, title, body)"
                          f" SELECT ((t * {p} + 1) << 24) + k + 1, CASE k WHEN 0 THEN title ELSE '' END,"
                          " body FROM hx")
    for statement in statements:
        conn.execute(statement)
    newest = f"strftime('%Y-%m-%dT%H:%M:%fZ', {now_us} / 1000000.0, 'unixepoch')"
    conn.executemany("INSERT INTO forum_projection_checkpoints (projection_name, last_sequence, updated_at)"
                     f" VALUES (?, ?, {newest})", [(name, commands) for name in PROJECTIONS])
    conn.execute(f"INSERT INTO forum_marks (name, value, updated_at) VALUES ('decided_floor', ?, {newest})",
                 (2 * commands - 1,))
    conn.execute("COMMIT")
    conn.execute("DROP TABLE h")
    conn.execute("DROP TABLE hx")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return time.perf_counter() - started


def measure_reader(db_path: Path, reads: int) -> list[list[Any]]:
    """Reads in process on a read-only connection: one warm-up, then ``reads`` timed calls each."""
    from metawsm.forum.reads.reader import ForumReader

    conn = open_connection(db_path, read_only=True)
    reader = ForumReader(conn)
    page_two = reader.search("fix", limit=50)[1]
    cases: list[tuple[str, Any]] = [
        ("list: 50 newest", lambda: reader.list_threads(limit=50)),
        ("search 'history' (every title)", lambda: reader.search("history", limit=50)),
        ("search 'fix' (every post)", lambda: reader.search("fix", limit=50)),
        ("search 'fix history' (two terms)", lambda: reader.search("fix history", limit=50)),
        ("search 'fix', second page", lambda: reader.search("fix", cursor=page_two, limit=50)),
        ("search '777' (1 thread in 1,000)", lambda: reader.search("777", limit=50)),
        ("search 'nothingmatches'", lambda: reader.search("nothingmatches", limit=50)),
        ("search 'fix 777' (every post + rare)", lambda: reader.search("fix 777", limit=50)),
        ("search 'fi*' (prefix, every post)", lambda: reader.search("fi*", limit=50)),
    ]
    found = []
    for name, call in cases:
        call()
        seconds = []
        for _ in range(reads):
            started = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - started)
        found.append(latency_row(name, seconds))
    conn.close()
    return found


def bytes_per_thread(db_path: Path, threads: int) -> tuple[list[list[Any]], float, float]:
    """Bytes per thread of each table and index (``dbstat``), biggest first; total and after retention."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    sizes = conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    owners = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
    conn.close()
    total = sum(size for _, size in sizes)
    outbox = sum(size for name, size in sizes if owners.get(name) == "forum_outbox")
    rows = [[name, owners.get(name, name), size / threads] for name, size in sizes if size / threads >= 1]
    return rows, total / threads, (total - outbox) / threads


def set_floor(db_path: Path, present: bool, commands: int) -> None:
    conn = sqlite3.connect(db_path, timeout=30)
    with conn:
        if present:
            conn.execute("INSERT INTO forum_marks (name, value, updated_at) VALUES ('decided_floor', ?, '')"
                         " ON CONFLICT(name) DO NOTHING", (2 * commands - 1,))
        else:
            conn.execute("DELETE FROM forum_marks WHERE name = 'decided_floor'")
    conn.close()


def warm(db_path: Path) -> None:
    """Read the file once, so every start measures a warm page cache alike."""
    with open(db_path, "rb") as handle:
        while handle.read(1 << 24):
            pass


def start_once(serve: Serve) -> tuple[float, float]:
    """Spawn; seconds to health 200 with status ok, and to the first write answered 200."""
    started = time.perf_counter()
    serve.spawn()
    healthy = None
    deadline = time.monotonic() + 300
    while healthy is None:
        if serve.process is not None and serve.process.poll() is not None:
            raise RuntimeError("metawsm serve exited; log tail:\n" + serve.log_tail())
        try:
            status, body = http(serve.url, "GET", "/api/v1/health", timeout=5)
            if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                healthy = time.perf_counter() - started
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("not healthy after 300 s; log tail:\n" + serve.log_tail())
        if healthy is None:
            time.sleep(0.02)  # polling, not synchronising: a tighter loop only takes CPU from serve
    status, body = http(serve.url, "POST", "/api/v1/forum/threads",
                        {"ticket": "BENCH", "title": "first after start", "body": "b"}, timeout=60)
    if status != 200:
        raise RuntimeError(f"the first write answered {status}: {body}")
    return healthy, time.perf_counter() - started


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "metawsm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "metawsm"]


def measure_reads(serve: Serve, reads: int, cli_runs: int) -> tuple[list[float], list[float]]:
    http_seconds: list[float] = []
    for _ in range(reads):
        started = time.perf_counter()
        status, body = http(serve.url, "GET", "/api/v1/forum/threads")
        http_seconds.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"list answered {status}: {body}")
    env = dict(os.environ)
    env.pop("METAWSM_SERVER", None)
    argv = cli_command() + ["forum", "list", "--server", serve.url]
    cli_seconds: list[float] = []
    for _ in range(cli_runs):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, timeout=60)
        cli_seconds.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise RuntimeError(f"forum list exited {done.returncode}: {done.stderr.decode()[-300:]}")
    return http_seconds, cli_seconds


def relay_details(serve: Serve) -> dict[str, Any]:
    status, body = http(serve.url, "GET", "/api/v1/debug/actors")
    if status != 200:
        return {}
    stack = [body["actors"]]
    while stack:
        node = stack.pop()
        if node["path"] == "root/forum/relay":
            details: dict[str, Any] = node.get("details", {})
            return details
        stack.extend(node.get("children", []))
    return {}


def measure_pruning(serve: Serve, rate: float) -> dict[str, Any]:
    """Paced writes while the first retention sweep runs; latencies split at the sweep's start."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def writer() -> None:
        interval = 1.0 / rate
        next_at = time.perf_counter()
        n = 0
        while not stop.is_set():
            next_at += interval
            started = time.perf_counter()
            status, _ = http(serve.url, "POST", "/api/v1/forum/threads",
                             {"ticket": "PRUNE", "title": f"w{n}", "body": "b"})
            if status == 200:
                samples.append((started, time.perf_counter() - started))
            n += 1
            pause = next_at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # pacing the load, not synchronising

    thread = threading.Thread(target=writer, daemon=True)
    origin = time.perf_counter()
    thread.start()
    began = ended = None
    pruned = 0
    while ended is None and time.perf_counter() - origin < 1800:
        details = relay_details(serve)
        pruned = int(details.get("pruned_total", 0))
        if began is None and pruned > 0:
            began = time.perf_counter()
        if began is not None and int(details.get("retention_sweeps", 0)) >= 1:
            ended = time.perf_counter()
        time.sleep(0.25)  # polling the debug endpoint
    stop.set()
    thread.join(timeout=30)
    if began is None:
        began = ended = time.perf_counter()
    assert ended is not None
    before = [s for at, s in samples if at < began]
    during = [s for at, s in samples if began <= at <= ended]
    return {"pruned": pruned, "seconds": ended - began, "before": before, "during": during}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000, help="commands of history (default 1,000,000)")
    parser.add_argument("--posts-per-thread", type=int, default=10, help="commands per thread (default 10)")
    parser.add_argument("--history-days", type=float, default=14.0, help="history spread over this many days")
    parser.add_argument("--starts", type=int, default=3, help="starts per variant (default 3)")
    parser.add_argument("--reads", type=int, default=300, help="GET /api/v1/forum/threads requests (default 300)")
    parser.add_argument("--cli", type=int, default=30, help="whole `metawsm forum list` processes (default 30)")
    parser.add_argument("--no-search", action="store_true", help="leave the full-text index empty (faster build)")
    parser.add_argument("--prune", action="store_true", help="then measure the first retention sweep")
    parser.add_argument("--rate", type=float, default=50.0, help="writes/s while pruning (default 50)")
    parser.add_argument("--db", type=Path, help="build the history here and keep it; reuse it when it exists "
                        "(its --commands must match; --prune deletes part of it)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--reads-only", action="store_true", help="measure reads and sizes in process, no serve")
    args = parser.parse_args()
    commands = args.commands - args.commands % args.posts_per_thread
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        workdir = scratch.path / "serve"
        db_path = args.db.resolve() if args.db else workdir / ".metawsm" / "metawsm.db"
        db_path.parent.mkdir(parents=True, exist_ok=True)
        built = 0.0
        if not db_path.exists():
            built = build_history(db_path, commands, args.posts_per_thread, args.history_days, not args.no_search)
        size_mb = sum(f.stat().st_size for f in db_path.parent.glob(db_path.name + "*")) / 1e6
        print(machine_facts(redis_server))
        how = f"built in {built:.1f} s" if built else f"reused {db_path}"
        threads = commands // args.posts_per_thread
        print(f"history: {commands:,} commands in {threads:,} threads over "
              f"{args.history_days:g} days; {how}; database {size_mb:,.0f} MB")
        load = MachineLoad(redis_server.pid or 0)
        print()
        print(table(LATENCY_HEADERS, measure_reader(db_path, args.reads), title="reads in process (ForumReader)"))
        print(load.describe())
        sizes, total, kept = bytes_per_thread(db_path, threads)
        print()
        print(table(["table or index", "of table", "bytes per thread"], sizes, left=True))
        print(f"bytes per thread: {total:,.0f} in all; {kept:,.0f} without forum_outbox (what retention deletes)")
        if args.reads_only:
            redis_server.stop()
            return 0
        keep_everything = {"outbox_days": 3650, "stream_days": 3650, "ledger_days": 3650}
        results: dict[str, list[tuple[float, float]]] = {}
        reads: tuple[list[float], list[float]] = ([], [])
        load.reset()
        try:
            for label, present in (("no decided floor (full scans)", False), ("decided floor", True)):
                for run in range(args.starts):
                    set_floor(db_path, present, commands)
                    warm(db_path)
                    serve = Serve(workdir, policy(redis_server.url, retention=keep_everything))
                    serve.db_path = db_path
                    try:
                        results.setdefault(label, []).append(start_once(serve))
                        if present and run == args.starts - 1:
                            reads = measure_reads(serve, args.reads, args.cli)
                    finally:
                        serve.stop()
            busy = load.describe()
            pruning = None
            if args.prune:
                serve = Serve(workdir, policy(redis_server.url, retention={"sweep_seconds": 5}))
                serve.db_path = db_path
                try:
                    serve.start(timeout=300)
                    pruning = measure_pruning(serve, args.rate)
                finally:
                    serve.stop()
        finally:
            redis_server.stop()

    rows = []
    for label, runs in results.items():
        healthy = [h for h, _ in runs]
        first = [w for _, w in runs]
        rows.append([label, len(runs), statistics.median(healthy) * 1000, max(healthy) * 1000,
                     statistics.median(first) * 1000, max(first) * 1000])
    print()
    print(table(["serve start-up", "starts", "healthy p50 ms", "healthy max ms", "first write p50 ms",
                 "first write max ms"], rows))
    print()
    print(table(LATENCY_HEADERS, [latency_row("GET /api/v1/forum/threads (HTTP)", reads[0]),
                                  latency_row("metawsm forum list (whole process)", reads[1])]))
    print(busy)
    if pruning is not None:
        print()
        print(f"first retention sweep: {pruning['pruned']:,} outbox rows deleted in {pruning['seconds']:.1f} s "
              f"while writing at {args.rate:g}/s")
        print(table(LATENCY_HEADERS, [latency_row("write before the sweep", pruning["before"]),
                                      latency_row("write during the sweep", pruning["during"])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
