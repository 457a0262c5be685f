# Run:  .venv/bin/python bench/agents.py [--agents 50] [--rounds 2]
"""N real tmux agents under one daemon: guidance_request -> ``awaiting_guidance``, CPU and RSS.

Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory (its own Redis,
never an embedded one; a scratch git repository mapped by ``workspace.repo_sources``; a
private tmux socket; docs provider ``none``) with a policy whose ``agents`` lists ``--agents``
agents of the ``default-shell`` profile (``bash`` in a tmux session each).  Starts one
bootstrap run and waits until it is ``running`` with every agent ``healthy``; then measures:

* **at rest** (``--rest`` seconds, no client): the serve process's CPU as a share of one
  core, its children's (the tmux and git subprocesses of the agents' health polls), the tmux
  server's, serve's RSS and thread count;
* **guidance round trips**, ``--rounds`` times over every agent in turn: ``POST
  /api/v1/forum/control/signal`` with a ``guidance_request`` from the agent, then polls
  ``GET /api/v1/runs?ticket=<ticket>`` until the run is ``awaiting_guidance``; the figure is
  from sending the signal to the first poll that shows it.  The list route is polled because
  it reads SQLite only: ``GET /api/v1/runs/{id}`` also asks git about every workspace (two
  processes per repository), which would make each poll, not the daemon, the measure.  Then the ``guidance_answer``, polled until the run is ``running`` again (also
  reported).  Serve's CPU during the round trips is reported per round trip.

The machine's noise (other processes, hypervisor steal) is printed with each phase.  Finally the
run is stopped and cleaned up and the tmux server killed.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    LATENCY_HEADERS,
    MachineLoad,
    RawHttp,
    Scratch,
    Serve,
    end_run,
    latency_row,
    machine_facts,
    proc_children_cpu_seconds,
    proc_cpu_seconds,
    proc_rss_mb,
    proc_threads,
    start_redis,
    table,
)
from idle import REPO, TICKET, make_repo, run_policy, start_run, tmux_server_pid


def signal_body(run_id: str, agent: str, control_type: str, **fields: str) -> dict[str, Any]:
    payload = {"schema_version": 1, "control_type": control_type, "run_id": run_id, "agent_name": agent, **fields}
    return {"run_id": run_id, "ticket": TICKET, "agent_name": agent, "actor_type": "agent", "actor_name": agent,
            "payload": payload}


async def round_trips(port: int, run_id: str, agents: list[str], rounds: int,
                      timeout: float) -> tuple[list[float], list[float]]:
    conn = await RawHttp("127.0.0.1", port).connect()
    to_awaiting: list[float] = []
    to_running: list[float] = []

    async def run_status() -> str:
        code, raw = await conn.request("GET", f"/api/v1/runs?ticket={TICKET}")
        if code != 200:
            raise SystemExit(f"GET /api/v1/runs?ticket={TICKET} answered {code}: {raw[:200]!r}")
        [run] = [r for r in json.loads(raw)["runs"] if r["run_id"] == run_id]
        return str(run["status"])

    async def until(wanted: str, started: float) -> float:
        while True:
            if await run_status() == wanted:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"run {run_id} did not become {wanted} within {timeout}s")

    async def send(body: dict[str, Any]) -> None:
        code, raw = await conn.request("POST", "/api/v1/forum/control/signal", json.dumps(body).encode())
        if code not in (200, 202):
            raise SystemExit(f"{body['payload']['control_type']} answered {code}: {raw[:300]!r}")

    for round_no in range(rounds):
        for agent in agents:
            started = time.perf_counter()
            await send(signal_body(run_id, agent, "guidance_request", question=f"{agent} question {round_no}?"))
            to_awaiting.append(await until("awaiting_guidance", started))
            started = time.perf_counter()
            await send(signal_body(run_id, agent, "guidance_answer", answer=f"answer {round_no}"))
            to_running.append(await until("running", started))
    await conn.close()
    return to_awaiting, to_running


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=50, help="agents in the run (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="guidance round trips per agent (default 2)")
    parser.add_argument("--rest", type=float, default=20.0, help="seconds measured at rest (default 20)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before measuring at rest")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one status change may take")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the run to be running")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    for tool in ("tmux", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; agents need it (apt-get install {tool})")
            return 2
    tmux_socket = f"mwb-{uuid.uuid4().hex[:8]}"
    names = [f"agent{i:03d}" for i in range(args.agents)]
    with Scratch(args.keep) as scratch:
        repo = scratch.path / REPO
        make_repo(repo)
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", run_policy(redis_server.url, repo, tmux_socket, args.agents))
        run_id = ""
        try:
            serve.start()
            started = time.monotonic()
            run_id = start_run(serve, repo, args.agents, args.start_timeout)
            ready = time.monotonic() - started
            time.sleep(args.settle)
            tmux_pid = tmux_server_pid(tmux_socket)
            pids = [serve.pid, redis_server.pid or 0] + ([tmux_pid] if tmux_pid else [])

            load = MachineLoad(*pids)
            c0, k0 = proc_cpu_seconds(serve.pid), proc_children_cpu_seconds(serve.pid)
            t0 = proc_cpu_seconds(tmux_pid) if tmux_pid else 0.0
            began = time.monotonic()
            time.sleep(args.rest)
            span = time.monotonic() - began
            rest = {
                "serve": (proc_cpu_seconds(serve.pid) - c0) / span * 100,
                "children": (proc_children_cpu_seconds(serve.pid) - k0) / span * 100,
                "tmux": ((proc_cpu_seconds(tmux_pid) - t0) / span * 100) if tmux_pid else 0.0,
                "rss": proc_rss_mb(serve.pid),
                "threads": proc_threads(serve.pid),
                "noise": load.describe(),
            }

            load = MachineLoad(*pids)
            c0 = proc_cpu_seconds(serve.pid)
            began = time.monotonic()
            to_awaiting, to_running = asyncio.run(round_trips(serve.port, run_id, names, args.rounds, args.timeout))
            busy_span = time.monotonic() - began
            busy_cpu = proc_cpu_seconds(serve.pid) - c0
            busy_noise = load.describe()
            rss_after = proc_rss_mb(serve.pid)
        finally:
            end_run(serve, redis_server, tmux_socket, run_id)

    trips = len(to_awaiting)
    print(machine_facts())
    print(f"run {run_id}: {args.agents} agents running and healthy {ready:.1f}s after POST /api/v1/runs")
    print()
    print(table(["at rest", "serve % core", "children % core", "tmux % core", "RSS MB", "threads"], [[
        f"{args.agents} agents, {args.rest:.0f} s", rest["serve"], rest["children"], rest["tmux"],
        f"{rest['rss']:.1f}", rest["threads"]]]))
    print(f"  {rest['noise']}")
    print()
    print(f"{trips} guidance round trips ({args.rounds} per agent, agents in turn); each figure from sending the "
          "signal to the first GET /api/v1/runs?ticket=... showing the new status")
    print(table(LATENCY_HEADERS, [
        latency_row("guidance_request -> awaiting_guidance", to_awaiting),
        latency_row("guidance_answer -> running", to_running),
    ]))
    print(f"serve CPU meanwhile: {busy_cpu / busy_span * 100:.1f} % of a core over {busy_span:.1f} s "
          f"({busy_cpu / max(1, 2 * trips) * 1000:.2f} ms per signal, polls included); RSS after {rss_after:.1f} MB")
    print(f"  {busy_noise}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
