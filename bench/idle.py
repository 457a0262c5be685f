# Run:  .venv/bin/python bench/idle.py [--agents 50] [--seconds 20]
"""CPU, wake-ups and memory of ``metawsm serve`` at rest: no client, and then N idle agents.

Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory (policy as the
other benches: its own Redis, never an embedded one; a scratch git repository mapped by
``workspace.repo_sources``; a private tmux socket; docs provider ``none``).

1. **0 agents**: once health is 200, waits ``--settle`` seconds (start-up work: reconcile,
   the first sweeps), then measures over ``--seconds``, in ``--windows`` equal windows:
   the serve process's CPU (user + system of all its threads, ``/proc/<pid>/stat``) as a
   share of one core, its children's CPU (tmux and git subprocesses it waited for), its
   wake-ups (voluntary + involuntary context switches summed over its threads, per second),
   its RSS and thread count; Redis' CPU too.
2. **N agents** (``--agents``, default 50; 0 skips it): starts one bootstrap run whose policy
   lists N agents of the ``default-shell`` profile (``bash`` in a tmux session each), waits
   for the run to be ``running`` and every agent ``healthy``, settles, and measures the same,
   plus the tmux server's CPU.  The per-agent cost is (N agents - 0 agents) / N.

No client talks to the daemon while it is measured (the script reads ``/proc`` only).  The
min / median / max over the windows and the rest of the machine's CPU meanwhile (other
processes, hypervisor steal) are the noise figures.  Finally the run is stopped and cleaned
up and the tmux server killed.  Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    MachineLoad,
    Scratch,
    Serve,
    end_run,
    http,
    machine_facts,
    policy,
    proc_children_cpu_seconds,
    proc_cpu_seconds,
    proc_rss_mb,
    proc_threads,
    proc_wakeups,
    start_redis,
    table,
)

TICKET = "IDLE-1"
REPO = "benchrepo"


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("bench repository\n")
    subprocess.run([*git, "-C", str(path), "add", "README.md"], check=True)
    subprocess.run([*git, "-C", str(path), "commit", "-q", "-m", "initial"], check=True)


def run_policy(redis_url: str, repo: Path, tmux_socket: str, agents: int) -> dict[str, Any]:
    data = policy(redis_url)
    data["workspace"] = {"repo_sources": {REPO: str(repo)}, "base_branch": "main"}
    data["docs"] = {"provider": "none", "seed_mode": "none"}
    data["tmux"] = {"socket": tmux_socket}
    if agents > 0:
        data["agents"] = [{"name": f"agent{i:03d}", "profile": "default-shell"} for i in range(agents)]
    return data


def start_run(serve: Serve, repo: Path, agents: int, timeout: float) -> str:
    """Start a bootstrap run and wait until it is running and all ``agents`` are healthy."""
    request = {"mode": "bootstrap", "tickets": [TICKET], "repos": [REPO], "cwd": str(repo),
               "brief": {"goal": "measure idle cost", "scope": "bench", "done_criteria": "figures",
                         "constraints": "none", "merge_intent": "none"}}
    status, body = http(serve.url, "POST", "/api/v1/runs", request, timeout=timeout)
    if status != 200:
        raise SystemExit(f"starting the run failed: POST /api/v1/runs answered {status}: {body}\n"
                         + serve.log_tail(15))
    run_id = str(body["run"]["run_id"])
    started = time.monotonic()
    while True:
        status, body = http(serve.url, "GET", f"/api/v1/runs/{run_id}", timeout=30)
        run = body.get("run", {}) if status == 200 and isinstance(body, dict) else {}
        healthy = sum(1 for a in run.get("agents", []) if a.get("health") == "healthy")
        if run.get("status") == "running" and healthy >= agents:
            return run_id
        if run.get("status") in ("failed", "stopped", "closed") or time.monotonic() - started > timeout:
            raise SystemExit(f"run {run_id} not running with {agents} healthy agents after "
                             f"{time.monotonic() - started:.0f}s (status {run.get('status')}, healthy {healthy})\n"
                             + serve.log_tail(15))
        time.sleep(0.5)


def tmux_server_pid(socket: str) -> int:
    out = subprocess.run(["tmux", "-L", socket, "display-message", "-p", "#{pid}"],
                         capture_output=True, text=True).stdout.strip()
    return int(out) if out.isdigit() else 0


def measure(label: str, serve_pid: int, redis_pid: int, seconds: float, windows: int,
            tmux_pid: int = 0) -> dict[str, Any]:
    """CPU shares of one core and wake-ups per second over ``windows`` windows of the span."""
    span = seconds / windows
    load = MachineLoad(serve_pid, redis_pid, *([tmux_pid] if tmux_pid else []))
    cpu, children, wakeups, redis_cpu, tmux_cpu = [], [], [], [], []
    for _ in range(windows):
        c0, k0, w0 = proc_cpu_seconds(serve_pid), proc_children_cpu_seconds(serve_pid), proc_wakeups(serve_pid)
        r0 = proc_cpu_seconds(redis_pid)
        t0 = proc_cpu_seconds(tmux_pid) if tmux_pid else 0.0
        started = time.monotonic()
        time.sleep(span)
        elapsed = time.monotonic() - started
        cpu.append((proc_cpu_seconds(serve_pid) - c0) / elapsed * 100)
        children.append((proc_children_cpu_seconds(serve_pid) - k0) / elapsed * 100)
        wakeups.append((proc_wakeups(serve_pid) - w0) / elapsed)
        redis_cpu.append((proc_cpu_seconds(redis_pid) - r0) / elapsed * 100)
        tmux_cpu.append(((proc_cpu_seconds(tmux_pid) - t0) / elapsed * 100) if tmux_pid else 0.0)
    others, steal = load.shares()
    return {"label": label, "cpu": cpu, "children": children, "wakeups": wakeups, "redis": redis_cpu,
            "tmux": tmux_cpu, "rss": proc_rss_mb(serve_pid), "threads": proc_threads(serve_pid),
            "others": others * 100, "steal": steal * 100, "noise": load.describe()}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50, help="idle agents in the second phase (0 skips it)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (default 20)")
    parser.add_argument("--windows", type=int, default=4, help="windows per phase, for the spread (default 4)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the run to be running")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    if args.agents > 0:
        for tool in ("tmux", "git"):
            if shutil.which(tool) is None:
                print(f"{tool} is not installed; agents need it (apt-get install {tool}), or pass --agents 0")
                return 2
    tmux_socket = f"mwb-{uuid.uuid4().hex[:8]}"
    results: list[dict[str, Any]] = []
    with Scratch(args.keep) as scratch:
        repo = scratch.path / REPO
        make_repo(repo)
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", run_policy(redis_server.url, repo, tmux_socket, args.agents))
        run_id = ""
        try:
            serve.start()
            time.sleep(args.settle)
            redis_pid = redis_server.pid or 0
            results.append(measure("0 agents", serve.pid, redis_pid, args.seconds, args.windows))
            if args.agents > 0:
                started = time.monotonic()
                run_id = start_run(serve, repo, args.agents, args.start_timeout)
                print(f"run {run_id}: {args.agents} agents healthy after {time.monotonic() - started:.1f}s")
                time.sleep(args.settle)
                results.append(measure(f"{args.agents} agents", serve.pid, redis_pid, args.seconds, args.windows,
                                       tmux_server_pid(tmux_socket)))
        finally:
            end_run(serve, redis_server, tmux_socket, run_id)

    print(machine_facts())
    print(f"serve at rest, no client; {args.seconds:.0f} s per phase in {args.windows} windows: "
          "median (min-max) over the windows")
    print()
    rows = [[r["label"], spread(r["cpu"]), spread(r["children"]), spread(r["wakeups"]), spread(r["redis"]),
             spread(r["tmux"]), f"{r['rss']:.1f}", r["threads"], f"{r['others']:.0f} / {r['steal']:.1f}"]
            for r in results]
    print(table(["phase", "serve % core", "children % core", "wake-ups/s", "redis % core", "tmux % core",
                 "RSS MB", "threads", "others % / steal %"], rows))
    if len(results) == 2 and args.agents > 0:
        base, loaded = results
        per_agent = (statistics.median(loaded["cpu"]) + statistics.median(loaded["children"])
                     + statistics.median(loaded["tmux"]) - statistics.median(base["cpu"])
                     - statistics.median(base["children"])) / args.agents
        wake = (statistics.median(loaded["wakeups"]) - statistics.median(base["wakeups"])) / args.agents
        rss = (loaded["rss"] - base["rss"]) / args.agents
        print(f"per agent: {per_agent:.3f} % of a core (serve + its subprocesses + tmux server), "
              f"{wake:.2f} serve wake-ups/s, {rss * 1024:.0f} kB RSS")
    for r in results:
        print(f"{r['label']}: {r['noise']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
