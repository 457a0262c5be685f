# Run:  .venv/bin/python bench/cli_latency.py [--n 30]
"""Whole-process CLI latency: ``metawsm forum list`` with the daemon up, and failing fast when down.

Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory, opens a few
threads, then runs ``metawsm forum list --server URL`` ``--n`` times as a new process each time
(fork + exec + interpreter start + imports + one HTTP request + printing), timing each from
spawn to exit.  Then it stops the daemon and runs the same command ``--n`` times against the
now closed port: each must fail (non-zero exit, one ``error:`` line) and the figure is how
fast.  The console script is the venv's ``metawsm`` (``python -m metawsm`` if it is missing).
Not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

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


def cli_command() -> list[str]:
    script = Path(sys.executable).parent / "metawsm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "metawsm"]


def run_many(argv: list[str], n: int, env: dict[str, str]) -> tuple[list[float], dict[int, int], str]:
    seconds: list[float] = []
    codes: dict[int, int] = {}
    sample = ""
    for _ in range(n):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, env=env, timeout=30)
        seconds.append(time.perf_counter() - started)
        codes[done.returncode] = codes.get(done.returncode, 0) + 1
        sample = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()[-1:][0] \
            if (done.stdout or done.stderr) else ""
    return seconds, codes, sample


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="runs per case (default 30)")
    parser.add_argument("--threads", type=int, default=20, help="threads to list (default 20)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    base = cli_command()
    env = dict(os.environ)
    env.pop("METAWSM_SERVER", None)
    with Scratch(args.keep) as scratch:
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", policy(redis_server.url))
        try:
            serve.start()
            for i in range(args.threads):
                status, body = http(serve.url, "POST", "/api/v1/forum/threads",
                                    {"ticket": "CLI", "title": f"thread {i}", "body": "body"})
                if status != 200:
                    raise SystemExit(f"opening a thread answered {status}: {body}")
            argv = base + ["forum", "list", "--server", serve.url]
            run_many(argv, 3, env)  # warm the page cache
            load = MachineLoad(serve.pid, redis_server.pid or 0)
            up, up_codes, up_sample = run_many(argv, args.n, env)
            up_busy = load.describe()
        finally:
            serve.stop()
            redis_server.stop()
        load = MachineLoad()
        down, down_codes, down_sample = run_many(argv, args.n, env)
        down_busy = load.describe()

    print(machine_facts())
    print(f"command: {' '.join(base)} forum list --server URL")
    print()
    print(table(LATENCY_HEADERS, [
        latency_row("daemon up: whole process", up),
        latency_row("daemon down: whole process (fail-fast)", down),
    ]))
    print()
    print(f"daemon up:   exit codes {up_codes}; last line: {up_sample[:100]!r}; {up_busy}")
    print(f"daemon down: exit codes {down_codes}; last line: {down_sample[:140]!r}; {down_busy}")
    ok = set(up_codes) == {0} and 0 not in down_codes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
