# Run:  .venv/bin/python bench/guidance.py [--n 50]
"""Control signal ``guidance_request`` -> run status ``awaiting_guidance`` visible in the API.

Needs runs hosted by the daemon (``POST /api/v1/runs``, ``GET /api/v1/runs/{id}``), tmux and
git.  Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory with a
scratch git repository (``benchrepo``, mapped by ``workspace.repo_sources``), a private tmux
socket, docs provider ``none`` and the default shell agent; starts a bootstrap run and waits
for it to be ``running``.  Then ``--n`` times:

* ``POST /api/v1/forum/control/signal`` with a ``guidance_request`` for (run, ``agent``), and
  polls ``GET /api/v1/runs/{id}`` until ``status`` is ``awaiting_guidance``: the figure is from
  sending the signal to the first poll that shows it;
* then a ``guidance_answer``, and polls until the run is ``running`` again (also reported).

If the daemon does not host runs yet (``POST /api/v1/runs`` answers 404 ``runs_unavailable``
or the route is missing) it says so and exits with status 2 without measuring anything.
Finally the run is stopped and cleaned up and the tmux server killed.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
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
    http,
    latency_row,
    machine_facts,
    policy,
    start_redis,
    table,
)

TICKET = "BENCH-1"
AGENT = "agent"
REPO = "benchrepo"


def make_repo(path: Path) -> None:
    path.mkdir(parents=True)
    env_args = ["-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    (path / "README.md").write_text("bench repository\n")
    subprocess.run(["git", *env_args, "-C", str(path), "add", "README.md"], check=True)
    subprocess.run(["git", *env_args, "-C", str(path), "commit", "-q", "-m", "initial"], check=True)


def run_policy(redis_url: str, repo: Path, tmux_socket: str) -> dict[str, Any]:
    data = policy(redis_url)
    data["workspace"] = {"repo_sources": {REPO: str(repo)}, "base_branch": "main"}
    data["docs"] = {"provider": "none", "seed_mode": "none"}
    data["tmux"] = {"socket": tmux_socket}
    return data


def signal_body(run_id: str, control_type: str, **fields: str) -> dict[str, Any]:
    payload = {"schema_version": 1, "control_type": control_type, "run_id": run_id, "agent_name": AGENT, **fields}
    return {"run_id": run_id, "ticket": TICKET, "agent_name": AGENT, "actor_type": "agent", "actor_name": AGENT,
            "payload": payload}


async def measure(port: int, run_id: str, n: int) -> tuple[list[float], list[float], list[str]]:
    conn = await RawHttp("127.0.0.1", port).connect()
    to_awaiting: list[float] = []
    to_running: list[float] = []
    problems: list[str] = []

    async def status() -> str:
        code, raw = await conn.request("GET", f"/api/v1/runs/{run_id}")
        if code != 200:
            raise SystemExit(f"GET /api/v1/runs/{run_id} answered {code}: {raw[:200]!r}")
        return json.loads(raw)["run"]["status"]

    async def until(wanted: str, started: float, timeout: float = 10.0) -> float:
        while True:
            if await status() == wanted:
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"run {run_id} did not become {wanted} within {timeout}s")

    for i in range(n):
        body = json.dumps(signal_body(run_id, "guidance_request", question=f"bench question {i}?")).encode()
        started = time.perf_counter()
        code, raw = await conn.request("POST", "/api/v1/forum/control/signal", body)
        if code not in (200, 202):
            raise SystemExit(f"guidance_request answered {code}: {raw[:300]!r}")
        to_awaiting.append(await until("awaiting_guidance", started))
        body = json.dumps(signal_body(run_id, "guidance_answer", answer=f"bench answer {i}")).encode()
        started = time.perf_counter()
        code, raw = await conn.request("POST", "/api/v1/forum/control/signal", body)
        if code not in (200, 202):
            raise SystemExit(f"guidance_answer answered {code}: {raw[:300]!r}")
        to_running.append(await until("running", started))
    await conn.close()
    return to_awaiting, to_running, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="guidance round trips (default 50)")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds for the run to be running")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    for tool in ("tmux", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; runs need it (apt-get install {tool})")
            return 2
    tmux_socket = f"mwb-{uuid.uuid4().hex[:8]}"
    with Scratch(args.keep) as scratch:
        repo = scratch.path / REPO
        make_repo(repo)
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", run_policy(redis_server.url, repo, tmux_socket))
        run_id = ""
        try:
            serve.start()
            request = {"mode": "bootstrap", "tickets": [TICKET], "repos": [REPO], "cwd": str(repo),
                       "brief": {"goal": "measure guidance latency", "scope": "bench", "done_criteria": "figures",
                                 "constraints": "none", "merge_intent": "none"}}
            status, body = http(serve.url, "POST", "/api/v1/runs", request, timeout=args.start_timeout)
            code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
            if status in (404, 405) and code in ("runs_unavailable", "not_found", "method_not_allowed"):
                message = body["error"].get("message", "") if isinstance(body, dict) else str(body)
                print(f"runs are not hosted by this daemon yet: POST /api/v1/runs answered {status} {code} "
                      f"({message}). Nothing was measured; rerun once runs are wired into serve.")
                return 2
            if status != 200:
                print(f"starting the bootstrap run failed: POST /api/v1/runs answered {status}: {body}")
                print(serve.log_tail(15))
                return 1
            run_id = body["run"]["run_id"]
            started = time.perf_counter()
            while True:
                status, body = http(serve.url, "GET", f"/api/v1/runs/{run_id}")
                current = body["run"]["status"] if status == 200 else f"HTTP {status}"
                if current == "running":
                    break
                if current in ("failed", "stopped", "closed") or time.perf_counter() - started > args.start_timeout:
                    print(f"run {run_id} did not reach running (status {current}); serve log tail:")
                    print(serve.log_tail(15))
                    return 1
                time.sleep(0.1)
            load = MachineLoad(serve.pid, redis_server.pid or 0)
            to_awaiting, to_running, _ = asyncio.run(measure(serve.port, run_id, args.n))
            busy = load.describe()
        finally:
            end_run(serve, redis_server, tmux_socket, run_id)

    print(machine_facts())
    print(f"bootstrap run {run_id}, agent {AGENT!r}; each figure from sending the signal to the first "
          f"GET /api/v1/runs/{{id}} showing the new status")
    print()
    print(table(LATENCY_HEADERS, [
        latency_row("guidance_request -> awaiting_guidance", to_awaiting),
        latency_row("guidance_answer -> running", to_running),
    ]))
    print(busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
