# Run:  .venv/bin/python bench/mcp_latency.py [--n 30]
"""MCP: the operator's answer -> the agent's ``wait_for_answer`` tool call returns it.

Starts a private ``redis-server`` and ``metawsm serve`` in a scratch directory, a scratch git
repository and a bootstrap run whose agent is the default shell (it only has to exist: the
benchmark plays the agent through the MCP SDK's own client).  For each transport, stdio
(``metawsm mcp`` started with the agent session's environment, as its client would) and HTTP
(``/mcp`` with the agent's token), ``--n`` times:

* ``ask`` (a ``guidance_request``; the figure ``ask -> tool returned`` is its round trip);
* ``wait_for_answer`` is called and the benchmark waits until its WebSocket subscription shows in
  the daemon's ``metawsm_websocket_clients`` gauge, so the answer travels the live path;
* the operator's ``guidance_answer`` is POSTed to ``/api/v1/forum/control/signal``;
* figures: from sending the answer to the tool call's result arriving at the client, and from the
  answer's HTTP 200 (the daemon answers once the write is projected) to that result.

Finally the run is stopped and cleaned up and the tmux server killed.  Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from _harness import (
    LATENCY_HEADERS,
    RawHttp,
    Scratch,
    Serve,
    end_run,
    http,
    latency_row,
    machine_facts,
    start_redis,
    table,
)
from guidance import AGENT, REPO, TICKET, make_repo, run_policy

CLIENTS = re.compile(rb"^metawsm_websocket_clients (\d+)", re.M)


def session_env(tmux_socket: str, session: str) -> dict[str, str]:
    shown = subprocess.run(["tmux", "-L", tmux_socket, "show-environment", "-t", f"={session}"],
                           capture_output=True, text=True, check=True)
    pairs = (line.partition("=") for line in shown.stdout.splitlines() if line.startswith("METAWSM_"))
    return {name: value for name, _, value in pairs}


@asynccontextmanager
async def connect(transport: str, serve: Serve, agent_env: dict[str, str]) -> AsyncIterator[ClientSession]:
    if transport == "stdio":
        shim = serve.db_path.parent / "bin" / "metawsm"  # the daemon's metawsm, as the run's .mcp.json names it
        params = StdioServerParameters(command=str(shim), args=["mcp"], env=agent_env)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            yield session
    else:
        headers = {"Authorization": f"Bearer {agent_env['METAWSM_TOKEN']}"}
        async with create_mcp_http_client(headers=headers) as client, \
                streamable_http_client(serve.url + "/mcp", http_client=client) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            yield session


def tool_result(call: Any) -> dict[str, Any]:
    if call.is_error:
        raise SystemExit(f"tool error: {call.content[0].text}")
    return json.loads(call.content[0].text)


async def websocket_clients(conn: RawHttp) -> int:
    status, raw = await conn.request("GET", "/metrics")
    match = CLIENTS.search(raw) if status == 200 else None
    if match is None:
        raise SystemExit(f"GET /metrics answered {status} without metawsm_websocket_clients")
    return int(match.group(1))


async def measure(transport: str, serve: Serve, run_id: str, agent_env: dict[str, str],
                  n: int) -> dict[str, list[float]]:
    conn = await RawHttp("127.0.0.1", serve.port).connect()
    figures: dict[str, list[float]] = {"ask": [], "sent": [], "acknowledged": []}
    async with connect(transport, serve, agent_env) as mcp:
        for i in range(n):
            started = time.perf_counter()
            asked = tool_result(await mcp.call_tool("ask", {"question": f"bench question {i}?"}))
            figures["ask"].append(time.perf_counter() - started)
            before = await websocket_clients(conn)
            waiting = asyncio.create_task(mcp.call_tool("wait_for_answer", {"thread_id": asked["thread_id"],
                                                                            "timeout_seconds": 30}))
            deadline = time.monotonic() + 30
            while await websocket_clients(conn) <= before:  # subscribed: the answer takes the live path
                if time.monotonic() > deadline or waiting.done():
                    raise SystemExit("wait_for_answer never subscribed to the stream")
            payload = {"schema_version": 1, "control_type": "guidance_answer", "run_id": run_id,
                       "agent_name": AGENT, "answer": f"bench answer {i}"}
            body = json.dumps({"run_id": run_id, "ticket": TICKET, "agent_name": AGENT, "payload": payload}).encode()
            sent = time.perf_counter()
            status, raw = await conn.request("POST", "/api/v1/forum/control/signal", body)
            acknowledged = time.perf_counter()
            if status not in (200, 202):
                raise SystemExit(f"guidance_answer answered {status}: {raw[:300]!r}")
            answer = tool_result(await waiting)
            returned = time.perf_counter()
            if answer.get("answer") != f"bench answer {i}":
                raise SystemExit(f"wait_for_answer returned {answer}")
            figures["sent"].append(returned - sent)
            figures["acknowledged"].append(returned - acknowledged)
    await conn.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="ask/answer round trips per transport (default 30)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args()
    for tool in ("tmux", "git"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; runs need it (apt-get install {tool})")
            return 2
    tmux_socket = f"mwb-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, list[float]]] = {}
    with Scratch(args.keep) as scratch:
        repo = scratch.path / REPO
        make_repo(repo)
        redis_server = start_redis(scratch.path)
        serve = Serve(scratch.path / "serve", run_policy(redis_server.url, repo, tmux_socket))
        run_id = ""
        try:
            serve.start()
            request = {"mode": "bootstrap", "tickets": [TICKET], "repos": [REPO], "cwd": str(repo),
                       "brief": {"goal": "measure MCP latency", "scope": "bench", "done_criteria": "figures",
                                 "constraints": "none", "merge_intent": "none"}}
            status, body = http(serve.url, "POST", "/api/v1/runs", request, timeout=120)
            if status != 200:
                print(f"starting the bootstrap run failed: POST /api/v1/runs answered {status}: {body}")
                print(serve.log_tail(15))
                return 1
            run_id = body["run"]["run_id"]
            agent_env = session_env(tmux_socket, body["run"]["agents"][0]["session"])
            for transport in ("stdio", "http"):
                results[transport] = asyncio.run(measure(transport, serve, run_id, agent_env, args.n))
        finally:
            end_run(serve, redis_server, tmux_socket, run_id)

    print(machine_facts())
    print(f"bootstrap run {run_id}, agent {AGENT!r} played by the MCP SDK's client; the operator answers over HTTP")
    print()
    rows = []
    for transport, figures in results.items():
        rows += [latency_row(f"{transport}: answer sent -> wait_for_answer returned", figures["sent"]),
                 latency_row(f"{transport}: answer's HTTP 200 -> wait_for_answer returned", figures["acknowledged"]),
                 latency_row(f"{transport}: ask -> tool returned", figures["ask"])]
    print(table(LATENCY_HEADERS, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
