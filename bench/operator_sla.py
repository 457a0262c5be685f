# Run:  .venv/bin/python bench/operator_sla.py [--n 10] [--sla-seconds 1.2]
"""Time from a guidance request's SLA deadline to the operator's notification.

Starts a private ``redis-server`` and ``metawsm serve`` (like ``bench/guidance.py``: a scratch
git repository, a private tmux socket, a bootstrap run with the default shell agent) whose policy
sets ``forum.sla.escalation_minutes`` to ``--sla-seconds`` / 60 and ``operator.notify_command``
to a small Python script that appends the wall-clock time it started and ``METAWSM_EVENT`` to a
file.  Then ``--n`` times: send a ``guidance_request``, wait for the ``escalate_guidance``
notification, answer the request.

The figure is ``notification started - (request sent + SLA)``.  It includes the operator's
deadline timer, the claim in SQLite, the two forum writes (the escalation is notified once the
forum accepted its post) and starting the notify command's interpreter.  The request's own
``occurred_at`` is a few milliseconds after the client sent it, so the figure slightly
overstates the delay.  Not a test.
"""

from __future__ import annotations

import argparse
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
    Scratch,
    Serve,
    end_run,
    http,
    latency_row,
    machine_facts,
    start_redis,
    table,
)
from guidance import REPO, TICKET, make_repo, run_policy, signal_body

NOTIFY_SCRIPT = """
import json, os, sys, time
started = time.time()
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"t": started, "event": os.environ.get("METAWSM_EVENT")}) + "\\n")
"""


def notifications(path: Path, event: str) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["event"] == event]


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="escalations to measure (default 10)")
    parser.add_argument("--sla-seconds", type=float, default=1.2, help="forum.sla.escalation_minutes x 60")
    parser.add_argument("--start-timeout", type=float, default=120.0)
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
        script = scratch.path / "notify.py"
        script.write_text(NOTIFY_SCRIPT)
        calls = scratch.path / "notified.jsonl"
        redis_server = start_redis(scratch.path)
        data = run_policy(redis_server.url, repo, tmux_socket)
        data.setdefault("forum", {})["sla"] = {"escalation_minutes": args.sla_seconds / 60}
        data["operator"] = {"notify_command": [sys.executable, str(script), str(calls)]}
        serve = Serve(scratch.path / "serve", data)
        run_id = ""
        delays: list[float] = []
        try:
            serve.start()
            request = {"mode": "bootstrap", "tickets": [TICKET], "repos": [REPO], "cwd": str(repo),
                       "brief": {"goal": "measure the operator's SLA", "scope": "bench", "done_criteria": "figures",
                                 "constraints": "none", "merge_intent": "none"}}
            status, body = http(serve.url, "POST", "/api/v1/runs", request, timeout=args.start_timeout)
            if status != 200:
                print(f"starting the bootstrap run failed: POST /api/v1/runs answered {status}: {body}")
                print(serve.log_tail(15))
                return 1
            run_id = body["run"]["run_id"]
            wait_for(lambda: http(serve.url, "GET", f"/api/v1/runs/{run_id}")[1]["run"]["status"] == "running",
                     args.start_timeout, "the run to be running")
            load = MachineLoad(serve.pid, redis_server.pid or 0)
            for i in range(args.n):
                sent = time.time()
                code, answer = http(serve.url, "POST", "/api/v1/forum/control/signal",
                                    signal_body(run_id, "guidance_request", question=f"bench question {i}?"))
                if code not in (200, 202):
                    raise SystemExit(f"guidance_request answered {code}: {answer}")
                [*_, last] = wait_for(lambda i=i: (found := notifications(calls, "escalate_guidance"))
                                      and len(found) > i and found, args.sla_seconds + 30, "the escalation")
                delays.append(last["t"] - (sent + args.sla_seconds))
                code, answer = http(serve.url, "POST", "/api/v1/forum/control/signal",
                                    signal_body(run_id, "guidance_answer", answer=f"bench answer {i}"))
                if code not in (200, 202):
                    raise SystemExit(f"guidance_answer answered {code}: {answer}")
                wait_for(lambda: http(serve.url, "GET", f"/api/v1/runs/{run_id}")[1]["run"]["status"] == "running",
                         30, "the run to be running again")
            busy = load.describe()
        finally:
            end_run(serve, redis_server, tmux_socket, run_id)

    print(machine_facts())
    print(f"bootstrap run {run_id}; SLA {args.sla_seconds:g} s; figure: notify command started - (request sent + SLA)")
    print()
    print(table(LATENCY_HEADERS, [latency_row("SLA deadline -> notify command", delays)]))
    print(busy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
