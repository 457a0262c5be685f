# Run:  .venv/bin/python bench/footprint.py [--threads 5000] [--connections 16]
"""Database bytes per one-post thread, written through the real pipeline, before and after retention.

Starts ``metawsm serve`` (real Redis, SQLite ``FULL``) with a retention short enough that every
finished row is old by the time the load ends (``forum.retention.*_days`` of about a second, a
one-second sweep), opens ``--threads`` threads of one post each (a title and about 100 bytes of
text, as issue 19 counts them) through ``POST /api/v1/forum/threads``, waits until every
projection has applied every event, then until the retention sweep has left nothing it may
delete, stops the daemon and reads the file's pages per table and index (``dbstat``: pages in use,
with the room left in them; free pages are not counted, new rows reuse them).  ``history.py`` measures the same on its bulk-loaded
history; this one measures what the write path itself leaves behind.  Not a test; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MachineLoad,
    RawHttp,
    Scratch,
    Serve,
    machine_facts,
    policy,
    start_redis,
    table,
    wait_caught_up,
)
from metawsm.store import open_connection

TEXT = ("we looked at the failing step again and the fix is in the branch; the tests pass locally and "
        "the review notes are")  # about 100 bytes, as the "~100 bytes of text"
RETENTION_DAYS = 1.5 / 86400  # a second and a half: everything finished is old once the load ends


async def open_threads(serve: Serve, count: int, connections: int) -> int:
    host, port = serve.url.removeprefix("http://").split(":")
    written = 0

    async def worker(first: int) -> None:
        nonlocal written
        conn = await RawHttp(host, int(port)).connect()
        try:
            for i in range(first, count, connections):
                body = json.dumps({"ticket": f"FP-{i % 100}", "title": f"footprint thread {i}",
                                   "body": TEXT, "correlation_id": f"fp-{i}"}).encode()
                status, raw = await conn.request("POST", "/api/v1/forum/threads", body)
                if status not in (200, 202):
                    raise RuntimeError(f"open_thread answered {status}: {raw[:200]!r}")
                written += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker(w) for w in range(connections)))
    return written


def deletable(db_path: Path) -> int:
    """Rows retention would still delete (outbox rows, ledger rows)."""
    conn = open_connection(db_path, read_only=True)
    try:
        outbox = conn.execute("SELECT COUNT(*) FROM forum_outbox").fetchone()[0]
        ledger = conn.execute("SELECT COUNT(*) FROM forum_projection_events").fetchone()[0]
    finally:
        conn.close()
    return int(outbox) + int(ledger)


def wait_pruned(db_path: Path, timeout: float) -> int:
    """Wait until two sweeps in a row delete nothing more; the rows that stayed."""
    deadline = time.monotonic() + timeout
    last = deletable(db_path)
    while time.monotonic() < deadline:
        time.sleep(2.5)  # two sweeps of one second
        now = deletable(db_path)
        if now == last:
            return now
        last = now
    return last


def sizes(db_path: Path, threads: int) -> tuple[list[list[object]], float]:
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT name, SUM(pgsize), SUM(payload) FROM dbstat GROUP BY name ORDER BY 2 DESC").fetchall()
    owners = dict(conn.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
    conn.close()
    total = sum(size for _, size, _ in rows)
    listed = [[name, owners.get(name, name), f"{size / threads:.0f}", f"{payload / threads:.0f}"]
              for name, size, payload in rows if size / threads >= 4]
    return listed, total / threads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=5000, help="one-post threads to open (default 5000)")
    parser.add_argument("--connections", type=int, default=16, help="concurrent writers (default 16)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    retention = {"outbox_days": RETENTION_DAYS, "ledger_days": RETENTION_DAYS, "sweep_seconds": 1}
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url, retention=retention))
        try:
            serve.start()
            machine = MachineLoad(serve.pid, redis_server.pid or 0)
            started = time.perf_counter()
            written = asyncio.run(open_threads(serve, args.threads, args.connections))
            elapsed = time.perf_counter() - started
            drained = wait_caught_up(serve.db_path, timeout=300)
            left = wait_pruned(serve.db_path, timeout=300)
            busy = machine.describe()
        finally:
            serve.stop()
            redis_server.stop()
        listed, per_thread = sizes(serve.db_path, written)

    print(machine_facts())
    print(f"{written} one-post threads in {elapsed:.1f} s; caught up {drained:.1f} s later; "
          f"{left} outbox and ledger rows left after retention")
    print(busy)
    print()
    print(table(["table or index", "of table", "bytes/thread (pages)", "bytes/thread (payload)"], listed,
                title="after retention"))
    print()
    print(f"database bytes per one-post thread after retention: {per_thread:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
