"""The ``metawsm forum``/``health`` commands, run as real subprocesses against a real ``metawsm serve``.

Every command is executed as ``python -m metawsm ... --server <daemon>`` (stdout piped, so the
output is the plain tab-separated form) and checked against what the API itself says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from metawsm.transport.redis_process import free_tcp_port
from metawsm.waiting import wait_until
from support.http import auth_headers

TICKET = "METAWSM-002"


# -- helpers -------------------------------------------------------------------------------------


def cli(*args: str, server: str | None, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "metawsm", *args]
    if server is not None:
        argv += ["--server", server]
    full_env = {k: v for k, v in os.environ.items() if k != "METAWSM_SERVER"}
    full_env.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The command failed with ``code`` and one ``error:`` line (no traceback); returns the message."""
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0][len("error: "):]


def http(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **auth_headers(url)})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def api(server: str, path: str, **query: Any) -> Any:
    params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    status, body = http(f"{server}/api/v1{path}" + (f"?{params}" if params else ""))
    assert status == 200, body
    return body


def metric(server: str, line_prefix: str) -> float:
    with urllib.request.urlopen(urllib.request.Request(server + "/metrics", headers=auth_headers(server)),
                                timeout=10) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def tsv(stdout: str) -> list[list[str]]:
    return [line.split("\t") for line in stdout.splitlines() if line]


def ask(server: str, title: str = "Question", body: str = "Need guidance", *extra: str) -> str:
    out = ok(cli("forum", "ask", "--ticket", TICKET, "--title", title, "--body", body, *extra, server=server))
    thread_id = tsv(out)[0][0]
    assert thread_id.startswith("fthr_")
    return thread_id


# -- the runbook, verbatim -------------------------------------------------------------------------


def test_runbook_bring_up_commands_work_verbatim(serve_process):
    server = serve_process.url
    out = ok(cli("forum", "ask", "--run-id", "RUN_ID", "--ticket", "METAWSM-002", "--title", "Question",
                 "--body", "Need guidance", server=server))
    thread_id, state, priority, title = tsv(out)[0]
    assert (state, priority, title) == ("new", "normal", "Question")

    rows = tsv(ok(cli("forum", "list", "--run-id", "RUN_ID", server=server)))
    assert [r[0] for r in rows] == [thread_id]
    assert rows[0][1:5] == ["new", "normal", "METAWSM-002", "RUN_ID"]
    assert rows[0][-1] == "Question"

    shown = ok(cli("forum", "thread", "--thread-id", thread_id, server=server))
    assert shown.splitlines()[0] == f"{thread_id}\tQuestion"
    assert "state\tnew" in shown and "ticket\tMETAWSM-002" in shown and "run\tRUN_ID" in shown
    assert "    Need guidance" in shown

    signals = [
        ["--type", "guidance_request", "--question", "Need decision"],
        ["--type", "guidance_answer", "--answer", "Proceed"],
        ["--type", "completion", "--summary", "Implementation complete"],
        ["--type", "validation", "--status", "passed", "--done-criteria", "tests pass"],
    ]
    control_ids = set()
    for extra in signals:
        out = ok(cli("forum", "signal", "--run-id", "RUN_ID", "--ticket", "METAWSM-002", "--agent-name", "agent",
                     *extra, server=server))
        control_ids.add(out.strip())
    assert len(control_ids) == 1, control_ids
    control_id = control_ids.pop()
    assert control_id.startswith("fthr_") and control_id != thread_id

    debug = api(server, "/forum/debug", run_id="RUN_ID")["debug"]
    [control] = debug["control_state"]
    assert control["thread_id"] == control_id
    assert control["pending_guidance"] is False
    assert control["completion_signalled"] is True
    assert control["validation_status"] == "passed"
    assert control["validation_done_criteria"] == "tests pass"
    detail = api(server, f"/forum/threads/{control_id}")
    assert {p["author_type"] for p in detail["posts"]} == {"operator"}
    assert {p["author_name"] for p in detail["posts"]} == {"operator"}


# -- writes --------------------------------------------------------------------------------------


def test_thread_lifecycle_commands(serve_process):
    server = serve_process.url
    thread_id = ask(server, "Build is red", "CI fails on main", "--run-id", "r-1", "--agent", "alice",
                    "--priority", "high", "--actor-name", "alice")
    thread = api(server, f"/forum/threads/{thread_id}")["thread"]
    assert (thread["run_id"], thread["agent_name"], thread["priority"]) == ("r-1", "alice", "high")
    assert (thread["opened_by_type"], thread["opened_by_name"]) == ("agent", "alice")

    out = ok(cli("forum", "post", "--thread-id", thread_id, "--body", "looking at it", "--actor-name", "bob",
                 server=server))
    assert tsv(out)[0] == [thread_id, "new", "high", "Build is red"]

    out = ok(cli("forum", "assign", "--thread-id", thread_id, "--assignee", "carol", "--note", "yours",
                 server=server))
    assert tsv(out)[0][0] == thread_id
    thread = api(server, f"/forum/threads/{thread_id}")["thread"]
    assert (thread["assignee_type"], thread["assignee_name"]) == ("operator", "carol")

    assert tsv(ok(cli("forum", "state", "--thread-id", thread_id, "--state", "triaged", server=server)))[0][1] == "triaged"
    assert tsv(ok(cli("forum", "priority", "--thread-id", thread_id, "--priority", "urgent", server=server)))[0][2] == "urgent"

    out = ok(cli("forum", "answer", "--thread-id", thread_id, "--body", "fixed in abc123", "--actor-name", "op",
                 server=server))
    assert tsv(out)[0][1] == "answered"

    detail = api(server, f"/forum/threads/{thread_id}")
    assert [(p["author_type"], p.get("author_name", ""), p["body"]) for p in detail["posts"]] == [
        ("agent", "alice", "CI fails on main"),       # ask: --actor-type defaults to agent
        ("human", "bob", "looking at it"),            # post: human
        ("operator", "op", "fixed in abc123"),        # answer: operator
    ]
    shown = ok(cli("forum", "thread", "--thread-id", thread_id, server=server))
    assert shown.index("CI fails on main") < shown.index("looking at it") < shown.index("fixed in abc123")
    assert "assignee\toperator/carol" in shown and "agent\talice" in shown

    seen = tsv(ok(cli("forum", "seen", "--thread-id", thread_id, "--viewer-type", "human", "--viewer-id", "bob",
                      server=server)))[0]
    assert seen[:3] == [thread_id, "human/bob", str(detail["thread"]["last_event_sequence"])]
    seen = tsv(ok(cli("forum", "seen", "--thread-id", thread_id, "--viewer-type", "agent", "--viewer-id", "alice",
                      "--sequence", "1", server=server)))[0]
    assert seen[:3] == [thread_id, "agent/alice", "1"]

    out = ok(cli("forum", "close", "--thread-id", thread_id, server=server))
    assert tsv(out)[0][1] == "closed"
    assert api(server, f"/forum/threads/{thread_id}")["thread"]["state"] == "closed"


def test_env_var_selects_the_server(serve_process):
    result = cli("forum", "list", server=None, env={"METAWSM_SERVER": serve_process.url})
    assert ok(result) == ""
    ask(serve_process.url)
    assert len(tsv(ok(cli("forum", "list", server=None, env={"METAWSM_SERVER": serve_process.url})))) == 1


def test_twenty_cli_processes_writing_at_once_all_succeed(serve_process):
    """targets.md "Concurrent CLIs": no ``database is locked`` (or any other failure)."""
    server = serve_process.url
    thread_id = ask(server, "Shared thread")
    env = {k: v for k, v in os.environ.items() if k != "METAWSM_SERVER"}
    argvs = []
    for i in range(20):
        if i % 2:
            argvs.append(["forum", "post", "--thread-id", thread_id, "--body", f"post {i}"])
        else:
            argvs.append(["forum", "ask", "--ticket", TICKET, "--title", f"parallel {i}", "--body", "b"])
    processes = [
        subprocess.Popen([sys.executable, "-m", "metawsm", *argv, "--server", server],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for argv in argvs
    ]
    outcomes = [(p.wait(timeout=60), p.stdout.read(), p.stderr.read()) for p in processes]  # type: ignore[union-attr]  # started with stdout/stderr=PIPE
    for code, stdout, stderr in outcomes:
        assert code == 0 and "locked" not in stderr, f"exit {code}\nstdout: {stdout}\nstderr: {stderr}"
    detail = api(server, f"/forum/threads/{thread_id}")
    assert sorted(p["body"] for p in detail["posts"] if p["body"].startswith("post ")) == sorted(
        f"post {i}" for i in range(1, 20, 2))
    assert len([t for t in api(server, "/forum/threads", ticket=TICKET, limit=100)["threads"]
                if t["title"].startswith("parallel ")]) == 10


# -- reads and --json --------------------------------------------------------------------------


def test_reads_print_tables_and_json_matches_the_api(serve_process):
    server = serve_process.url
    first = ask(server, "Flaky test", "test_x fails sometimes", "--run-id", "r-1", "--actor-name", "alice")
    second = ask(server, "Deploy question", "which region?", "--run-id", "r-2", "--actor-name", "alice")
    ok(cli("forum", "priority", "--thread-id", second, "--priority", "urgent", server=server))

    rows = tsv(ok(cli("forum", "list", server=server)))
    assert [r[0] for r in rows] == [second, first]  # most recently updated first
    assert [len(r) for r in rows] == [8, 8]  # thread, state, priority, ticket, run, posts, updated, title
    assert tsv(ok(cli("forum", "list", "--priority", "urgent", server=server)))[0][0] == second
    assert [r[0] for r in tsv(ok(cli("forum", "list", "--limit", "1", server=server)))] == [second]

    def same(args: list[str], path: str, **query: Any) -> Any:
        printed = json.loads(ok(cli(*args, "--json", server=server)))
        assert printed == api(server, path, **query)
        return printed

    same(["forum", "list"], "/forum/threads")
    same(["forum", "list", "--run-id", "r-1"], "/forum/threads", run_id="r-1", limit=50)
    same(["forum", "thread", "--thread-id", first], f"/forum/threads/{first}")
    found = same(["forum", "search", "--query", "flaky"], "/forum/search", query="flaky")
    assert [t["thread_id"] for t in found["threads"]] == [first]
    assert tsv(ok(cli("forum", "search", "--query", "region", server=server)))[0][0] == second
    queue = same(["forum", "queue", "--type", "unanswered", "--viewer-type", "human", "--viewer-id", "bob"],
                 "/forum/queues", type="unanswered", viewer_type="human", viewer_id="bob")
    assert {t["thread_id"] for t in queue["threads"]} == {first, second}
    events = same(["forum", "events"], "/forum/events")
    assert [e["sequence"] for e in events["events"]] == [1, 2, 3]
    same(["forum", "events", "--cursor", "1", "--limit", "1"], "/forum/events", cursor=1, limit=1)
    same(["forum", "stats", "--run-id", "r-2"], "/forum/stats", run_id="r-2")

    lines = ok(cli("forum", "events", "--cursor", "1", server=server)).splitlines()
    assert lines == [
        f"2 forum.thread.opened {second} agent/alice \"Deploy question\" (normal)",
        f"3 forum.priority.changed {second} human normal -> urgent",
    ]
    stats = tsv(ok(cli("forum", "stats", server=server)))
    assert sorted(stats) == [[TICKET, "r-1", "new", "normal", "1"], [TICKET, "r-2", "new", "urgent", "1"]]

    debug = json.loads(ok(cli("forum", "debug", "--json", "--limit", "5", server=server)))["debug"]
    assert debug["outbox"]["pending_count"] >= 0
    assert all(t["stream"].startswith(debug["bus"]["stream_name"]) for t in debug["bus"]["topics"])
    text = ok(cli("forum", "debug", server=server))
    assert "outbox: pending" in text and debug["bus"]["topics"][0]["stream"] in text

    rebuilt = json.loads(ok(cli("forum", "rebuild", "--projection", "thread_views", "--json", server=server)))
    assert rebuilt["rebuild"]["projections"][0]["projection"] == "thread_views"
    rows = tsv(ok(cli("forum", "rebuild", server=server)))
    assert {r[0] for r in rows} == {"thread_views", "thread_stats", "queue_view", "control_state"}
    assert all(r[2] == "3" for r in rows)

    # writes with --json print the API's write response
    posted = json.loads(ok(cli("forum", "post", "--thread-id", first, "--body", "more", "--json", server=server)))
    assert posted["thread"] == api(server, f"/forum/threads/{first}")["thread"]


def test_health(serve_process):
    healthy = wait_until(lambda: (r := cli("health", server=serve_process.url)).returncode == 0 and r, timeout=20)
    out = healthy.stdout
    assert out.splitlines()[0] == "status: ok"
    assert re.search(r"^lag: outbox pending \d+", out, re.M)
    assert re.search(r"^outbox: pending \d+", out, re.M)
    assert re.search(r"^redis: connected redis://", out, re.M)
    body = json.loads(ok(cli("health", "--json", server=serve_process.url)))
    assert body["status"] == "ok" and set(body) >= {"worker", "outbox", "forum_bus", "actors"}


# -- refusals ------------------------------------------------------------------------------------


def test_refusals_exit_2_with_the_server_message(serve_process):
    server = serve_process.url
    thread_id = ask(server)

    # missing required flags: click's usage error
    for args in (["forum", "ask", "--ticket", "T", "--title", "t"],
                 ["forum", "post", "--body", "x"],
                 ["forum", "seen", "--thread-id", thread_id, "--viewer-type", "human"],
                 ["forum", "queue"],
                 ["forum", "search"],
                 ["forum", "signal", "--run-id", "r", "--ticket", "T", "--type", "completion"]):
        result = cli(*args, server=server)
        assert result.returncode == 2 and "Missing option" in result.stderr, (args, result.stderr)

    # bad enums and values: refused by the server, its message on one line
    assert refused(cli("forum", "ask", "--ticket", "T", "--title", "t", "--body", "b", "--priority", "asap",
                       server=server)) == 'invalid priority "asap": must be one of low, normal, high, urgent'
    assert refused(cli("forum", "state", "--thread-id", thread_id, "--state", "done", server=server)).startswith(
        'invalid state "done": must be one of new, triaged')
    assert refused(cli("forum", "post", "--thread-id", thread_id, "--body", "x", "--actor-type", "robot",
                       server=server)).startswith('invalid actor_type "robot"')
    assert refused(cli("forum", "list", "--state", "open", server=server)).startswith('invalid state "open"')
    assert "limit" in refused(cli("forum", "list", "--limit", "0", server=server))
    assert refused(cli("forum", "queue", "--type", "everything", "--viewer-type", "human", "--viewer-id", "bob",
                       server=server))
    assert refused(cli("forum", "rebuild", "--projection", "nope", server=server)).startswith('unknown projection "nope"')
    assert refused(cli("forum", "thread", "--thread-id", "fthr_missing", server=server)) == \
        "forum thread fthr_missing not found"
    assert refused(cli("forum", "post", "--thread-id", "fthr_missing", "--body", "x", server=server)) == \
        "forum thread fthr_missing not found"
    assert refused(cli("forum", "post", "--thread-id", thread_id, "--body", "   ", server=server)) == \
        "forum post body is required"

    # refused transition, then a closed thread
    ok(cli("forum", "answer", "--thread-id", thread_id, "--body", "done", server=server))
    assert refused(cli("forum", "state", "--thread-id", thread_id, "--state", "new", server=server)) == \
        "forum state transition answered -> new is not allowed"
    ok(cli("forum", "close", "--thread-id", thread_id, server=server))
    assert refused(cli("forum", "post", "--thread-id", thread_id, "--body", "again", server=server)) == \
        f"forum thread {thread_id} is closed"
    assert refused(cli("forum", "state", "--thread-id", thread_id, "--state", "triaged", server=server)) == \
        "forum state transition closed -> triaged is not allowed"
    assert api(server, f"/forum/threads/{thread_id}")["thread"]["state"] == "closed"

    # bad --server
    assert refused(cli("forum", "list", server="ftp://example.org")).startswith("invalid --server URL")


BAD_SIGNALS = [
    (["--type", "guidance_request"], "forum control guidance_request requires question"),
    (["--type", "guidance_request", "--question", "   "], "forum control guidance_request requires question"),
    (["--type", "guidance_answer", "--question", "q"], "forum control guidance_answer requires answer"),
    (["--type", "validation", "--done-criteria", "tests pass"], "forum control validation status must be passed|failed"),
    (["--type", "validation", "--status", "passed"], "forum control validation requires done_criteria"),
    (["--type", "validation", "--status", "green", "--done-criteria", "x"],
     "forum control validation status must be passed|failed"),
    (["--type", "approval"], "forum control control_type must be guidance_request|guidance_answer|completion|validation"),
    (["--type", "completion", "--actor-type", "robot"],
     'invalid actor_type "robot": must be one of agent, operator, human, system'),
]


def _signal_body(args: list[str]) -> dict[str, Any]:
    """What the server would receive for these flags (to ask it for its own verdict)."""
    values = dict(zip(args[::2], args[1::2]))
    payload = {"schema_version": 1, "control_type": values.pop("--type"), "run_id": "r-1", "agent_name": "agent"}
    actor_type = values.pop("--actor-type", "operator")
    payload.update({flag[2:].replace("-", "_"): value for flag, value in values.items()})
    return {"run_id": "r-1", "ticket": TICKET, "agent_name": "agent", "payload": payload,
            "actor_type": actor_type, "actor_name": "operator"}


def test_bad_signals_are_refused_locally_with_the_servers_message(serve_process):
    server = serve_process.url
    errors_before = metric(server, 'metawsm_http_errors_total{status="400"}')
    writes_before = metric(server, 'metawsm_forum_writes_total{result="applied"}')

    messages = []
    for args, expected in BAD_SIGNALS:
        result = cli("forum", "signal", "--run-id", "r-1", "--ticket", TICKET, "--agent-name", "agent", *args,
                     server=server)
        assert refused(result) == expected, args
        messages.append(expected)
    # nothing reached the daemon: no refusal counted, no write, no event
    assert metric(server, 'metawsm_http_errors_total{status="400"}') == errors_before
    assert metric(server, 'metawsm_forum_writes_total{result="applied"}') == writes_before
    assert api(server, "/forum/events")["events"] == []

    # and the daemon, given the same signals directly, says exactly the same
    for (args, _), expected in zip(BAD_SIGNALS, messages):
        status, body = http(server + "/api/v1/forum/control/signal", "POST", _signal_body(args))
        assert status == 400 and body["error"]["message"] == expected, (args, body)

    # refused locally even when no daemon is running
    down = f"http://127.0.0.1:{free_tcp_port()}"
    result = cli("forum", "signal", "--run-id", "r-1", "--ticket", TICKET, "--agent-name", "agent",
                 "--type", "guidance_request", server=down)
    assert refused(result) == "forum control guidance_request requires question"


# -- daemon down ---------------------------------------------------------------------------------


def test_fail_fast_when_the_daemon_is_down(tmp_path: Path):
    port = free_tcp_port()
    server = f"http://127.0.0.1:{port}"
    expected = f"cannot reach metawsm serve at {server} (connection refused); start it with: metawsm serve"
    commands = [
        ["forum", "list"],
        ["forum", "ask", "--ticket", TICKET, "--title", "t", "--body", "b"],
        ["forum", "thread", "--thread-id", "fthr_x"],
        ["forum", "signal", "--run-id", "r", "--ticket", "T", "--agent-name", "a", "--type", "completion"],
        ["forum", "watch"],
        ["health"],
    ]
    timings = {}
    for args in commands:
        started = time.monotonic()
        result = cli(*args, server=server)
        timings[" ".join(args[:2])] = elapsed = time.monotonic() - started
        assert refused(result, code=1) == expected
        assert result.stdout == ""
        assert elapsed < 1.0, f"{args}: {elapsed:.3f}s"
    # the default server, when nothing listens on 3001 here, gives the exact line of the spec
    if _nothing_listens(3001):
        result = cli("forum", "list", server=None)
        assert refused(result, code=1) == (
            "cannot reach metawsm serve at http://127.0.0.1:3001 (connection refused); start it with: metawsm serve")
    print("fail-fast wall times:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})


def _nothing_listens(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


# -- 202: accepted while the bus is down -----------------------------------------------------------


def test_write_accepted_while_redis_is_down_prints_queued(private_redis, redis_namespace, tmp_path):
    from support.daemon import ServeProcess, policy_data

    serve = ServeProcess(tmp_path / "serve", policy_data(private_redis.url, redis_namespace, write_wait_ms=300))
    serve.start()
    try:
        server = serve.url
        ask(server, "before")
        private_redis.stop()
        result = cli("forum", "ask", "--ticket", TICKET, "--title", "while down", "--body", "b", server=server)
        out = ok(result)
        match = re.fullmatch(r"queued: (fevt_\w+) \(will apply when the bus recovers\)\n", out)
        assert match, out
        as_json = json.loads(ok(cli("forum", "ask", "--ticket", TICKET, "--title", "json while down", "--body", "b",
                                    "--json", server=server)))
        assert as_json["accepted"] is True and as_json["event_id"].startswith("fevt_")
        health = cli("health", server=server)
        assert health.returncode == 1 and health.stdout.startswith("status: degraded")
        assert "redis: unreachable" in health.stdout

        private_redis.start()
        wait_until(lambda: len(api(server, "/forum/threads")["threads"]) == 3, timeout=30,
                   message="queued writes were not applied after Redis came back")
        titles = {row[-1] for row in tsv(ok(cli("forum", "list", server=server)))}
        assert titles == {"before", "while down", "json while down"}
        wait_until(lambda: cli("health", server=server).returncode == 0, timeout=30)
    finally:
        serve.stop()
