"""Agents act only for themselves: agent tokens end to end (real `metawsm serve`, tmux, git).

Proves, with script agents started by the daemon in their own tmux sessions:

* each agent session has its own ``METAWSM_TOKEN`` (``mwa_…``), read from tmux itself; agents of
  one run and of different runs get different tokens, and the operator token is in no session;
* the documented in-session commands (``metawsm forum ask`` / ``forum signal --type
  guidance_request``, no actor flags) are recorded as ``actor_type agent`` with the agent's name,
  the run waits for guidance and the question is in the operator's unanswered queue;
* with that token, answering, claiming another actor, run, ticket or agent, run control,
  rebuild, replay, fault injection, metrics and debug are refused (403 ``forbidden``, naming the
  agent) over HTTP and through the CLI (exit 2, one ``error:`` line), and nothing is written;
  reads are allowed;
* the operator still answers (CLI, token found by discovery) and the answer resumes the run;
* closing or cleaning up the run revokes its agents' tokens (401), and a restarted agent (API
  restart, crash restart) gets a new token while the old one is revoked.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from metawsm.waiting import wait_until
from support.agents import PYTHON, QUIET_AGENT, RunsEnv
from support.http import token_for

QUESTION = "Which database should I use?"
REVOKED = "invalid or revoked token"

# Asks in the forum and for guidance with the documented commands and no actor flags, then
# waits for the answer (reading the forum with its own token) and stays up.
ASKING_AGENT = """
metawsm forum ask --ticket "$METAWSM_TICKET" --title "Schema question" --body "Is the users table ours?"
say "ask exit status $?"
metawsm forum signal --run-id "$METAWSM_RUN_ID" --ticket "$METAWSM_TICKET" --agent-name "$METAWSM_AGENT" \\
  --type guidance_request --question "{question}"
say "signal exit status $?"
say "got answer: $(wait_answer)"
exec sleep 600
"""

TWO_AGENTS = {"agents": [{"name": "agent", "profile": "script"}, {"name": "reviewer", "profile": "script"}]}


@pytest.fixture(autouse=True)
def no_token_in_the_tests_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's CLI finds its token by discovery; agent tokens are passed explicitly."""
    monkeypatch.delenv("METAWSM_TOKEN", raising=False)


# -- helpers ----------------------------------------------------------------------------------------


def session_token(env: RunsEnv, session: str) -> str:
    """The agent's token as tmux holds it in the session's environment."""
    shown = env.tmux("show-environment", "-t", f"={session}", "METAWSM_TOKEN")
    assert shown.returncode == 0, shown.stderr
    name, _, value = shown.stdout.strip().partition("=")
    assert name == "METAWSM_TOKEN", shown.stdout
    return value


def process_token(pid: int) -> str:
    """The token in the environment of the agent's process itself."""
    variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in variables if v.startswith(b"METAWSM_TOKEN="))


def call(env: RunsEnv, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One request with exactly ``token``; returns (status, JSON body or text)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(env.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def cli_with(env: RunsEnv, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as run inside the agent's session: its token in ``METAWSM_TOKEN``."""
    return subprocess.run([PYTHON, "-m", "metawsm", *args], cwd=env.repo, env=dict(env.cli_env(), METAWSM_TOKEN=token),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def written(env: RunsEnv) -> dict[str, Any]:
    """What a refused request must not change: forum rows, runs and agents, the token file."""
    with closing(sqlite3.connect(env.serve.db_path)) as conn:
        counts = {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                  for table in ("forum_events", "forum_outbox", "forum_threads", "forum_posts", "forum_thread_reads",
                                "forum_state_transitions", "forum_assignments", "agent_tokens")}
        counts["runs"] = conn.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
        counts["agents"] = conn.execute("SELECT run_id, agent_name, status FROM run_agents ORDER BY 1, 2").fetchall()
    counts["token_file"] = (env.serve.db_path.parent / "token").read_text()
    counts["sessions"] = sorted(env.sessions())
    return counts


def asking_run(env: RunsEnv, ticket: str = "T-1") -> tuple[str, str, str]:
    """Start a run whose agent asked for guidance; returns (run id, session, the agent's token)."""
    run = env.start_run(ticket=ticket)
    run_id, session = run["run_id"], run["agents"][0]["session"]
    log = env.wait_pane_output(session, "signal exit status")
    assert "ask exit status 0\n" in log and "signal exit status 0\n" in log, log
    env.wait_status(run_id, "awaiting_guidance")
    return run_id, session, session_token(env, session)


def guidance_thread(env: RunsEnv, run_id: str) -> str:
    [pending] = env.snapshot(run_id)["pending_guidance"]
    return pending["thread_id"]


def agent_may_not(message: str, run_id: str, ticket: str = "T-1", agent: str = "agent") -> bool:
    return message.startswith(f'agent "{agent}" of run {run_id} ({ticket}) may not ')


# -- 1. the token in the session ---------------------------------------------------------------------


def test_each_agent_session_holds_its_own_agent_token_and_never_the_operators(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT, policy=TWO_AGENTS)
    runs = [env.start_run(ticket="T-1"), env.start_run(ticket="T-2")]
    sessions = [a["session"] for run in runs for a in run["agents"]]
    assert len(sessions) == 4 and all(a["socket"] == env.socket for run in runs for a in run["agents"])

    tokens = [session_token(env, session) for session in sessions]
    assert all(token.startswith("mwa_") and len(token) > 20 for token in tokens), tokens
    assert len(set(tokens)) == 4  # per agent and per run
    operator = token_for(env.url)
    assert operator.startswith("mwo_")
    for session in sessions:
        assert operator not in env.tmux("show-environment", "-t", f"={session}").stdout
    for token in tokens:
        assert call(env, token, "GET", "/api/v1/forum/threads")[0] == 200  # a real, working credential
    # Only hashes are stored: no token text in the database file.
    database = env.serve.db_path.read_bytes()
    assert not any(token.encode() in database for token in tokens)


# -- 2 and 5. the documented in-session commands; the operator answers -------------------------------


def test_in_session_commands_without_actor_flags_are_recorded_as_the_agent_and_the_operator_answers(
        runs_env) -> None:
    env = runs_env(agent=ASKING_AGENT, question=QUESTION)
    run_id, session, _ = asking_run(env)

    # forum ask: a thread in the agent's ticket and run, opened and written by the agent.
    [asked] = [t for t in env.api("GET", "/api/v1/forum/threads?ticket=T-1").data["threads"]
               if t["title"] == "Schema question"]
    assert (asked["run_id"], asked["agent_name"], asked["opened_by_type"], asked["opened_by_name"]) == (
        run_id, "agent", "agent", "agent")
    detail = env.api("GET", f"/api/v1/forum/threads/{asked['thread_id']}").data
    assert [(p["author_type"], p.get("author_name")) for p in detail["posts"]] == [("agent", "agent")]

    # forum signal --type guidance_request: the run waits, the question is unanswered for the operator.
    [pending] = env.snapshot(run_id)["pending_guidance"]
    assert (pending["agent_name"], pending["question"]) == ("agent", QUESTION)
    events = env.api("GET", f"/api/v1/forum/events?run_id={run_id}&limit=1000").data["events"]
    requests = [e for e in events if e["payload_json"].get("control_type") == "guidance_request"]
    assert [(e["envelope"]["actor_type"], e["envelope"]["actor_name"]) for e in requests] == [("agent", "agent")]
    assert all((e["envelope"]["actor_type"], e["envelope"].get("actor_name")) == ("agent", "agent") for e in events)
    unanswered = wait_until(
        lambda: [t["thread_id"] for t in env.api(
            "GET", "/api/v1/forum/queues?type=unanswered&viewer_type=human&viewer_id=operator&ticket=T-1"
        ).data["threads"]] or None, timeout=10, message="the unanswered queue")
    assert pending["thread_id"] in unanswered

    # The operator (no METAWSM_TOKEN: the CLI finds the token file) answers; the run resumes.
    answered = env.cli("forum", "signal", "--run-id", run_id, "--ticket", "T-1", "--agent-name", "agent",
                       "--type", "guidance_answer", "--answer", "Use SQLite")
    assert answered.returncode == 0, answered.stderr
    env.wait_status(run_id, "running")
    assert "got answer: Use SQLite" in env.wait_pane_output(session, "got answer:")
    events = env.api("GET", f"/api/v1/forum/events?run_id={run_id}&limit=1000").data["events"]
    [answer] = [e for e in events if e["payload_json"].get("control_type") == "guidance_answer"]
    assert (answer["envelope"]["actor_type"], answer["envelope"]["actor_name"]) == ("operator", "operator")


# -- 3 and 4. what an agent token may not do ----------------------------------------------------------


def test_an_agent_token_is_refused_everything_but_its_own_writes_and_reads_and_nothing_is_written(
        runs_env) -> None:
    env = runs_env(agent=ASKING_AGENT, question=QUESTION)
    run_id, _, token = asking_run(env, "T-1")
    other_run, _, _ = asking_run(env, "T-2")
    thread, other_thread = guidance_thread(env, run_id), guidance_thread(env, other_run)
    sig = {"schema_version": 1, "run_id": run_id, "agent_name": "agent"}
    answer = {"run_id": run_id, "ticket": "T-1", "agent_name": "agent",
              "payload": {**sig, "control_type": "guidance_answer", "answer": "x"}}
    ask = {"ticket": "T-1", "title": "t", "body": "b"}
    request = {"run_id": run_id, "ticket": "T-1", "agent_name": "reviewer",
               "payload": {**sig, "agent_name": "reviewer", "control_type": "guidance_request", "question": "q"}}
    foreign = {"run_id": other_run, "ticket": "T-1", "agent_name": "agent",
               "payload": {**sig, "run_id": other_run, "control_type": "guidance_request", "question": "q"}}
    run_request = {"mode": "run", "tickets": ["T-9"], "repos": [env.repo_name], "cwd": str(env.repo)}
    refused = [  # (method, path, body, what the message says after "may not ")
        ("POST", "/api/v1/forum/control/signal", answer, "send a 'guidance_answer' signal"),
        ("POST", f"/api/v1/forum/threads/{thread}/answer", {"body": "x"}, "do this"),
        ("POST", "/api/v1/forum/threads", {**ask, "actor_type": "operator"}, "write as actor_type 'operator'"),
        ("POST", "/api/v1/forum/threads", {**ask, "actor_name": "someone-else"}, "write as actor_name 'someone-else'"),
        ("POST", "/api/v1/forum/threads", {**ask, "ticket": "T-2"}, "act on ticket 'T-2'"),
        ("POST", "/api/v1/forum/threads", {**ask, "run_id": other_run}, f"act in run '{other_run}'"),
        ("POST", f"/api/v1/forum/threads/{other_thread}/posts", {"body": "b"}, f"act in run '{other_run}'"),
        ("POST", f"/api/v1/forum/threads/{thread}/posts", {"body": "b", "actor_type": "human"},
         "write as actor_type 'human'"),
        ("POST", "/api/v1/forum/control/signal", request, "act as agent 'reviewer'"),
        ("POST", "/api/v1/forum/control/signal", foreign, f"act in run '{other_run}'"),
        ("POST", f"/api/v1/forum/threads/{thread}/state", {"to_state": "answered"}, "do this"),
        ("POST", f"/api/v1/forum/threads/{thread}/close", {}, "do this"),
        ("POST", "/api/v1/runs", run_request, "do this"),
        ("POST", f"/api/v1/runs/{run_id}/stop", {}, "do this"),
        ("POST", f"/api/v1/runs/{run_id}/cleanup", {}, "do this"),
        ("POST", f"/api/v1/runs/{run_id}/close", {}, "do this"),
        ("POST", f"/api/v1/runs/{other_run}/restart", {}, "do this"),
        ("POST", "/api/v1/forum/rebuild", {}, "do this"),
        ("POST", "/api/v1/forum/parked/1-0/replay", {}, "do this"),
        ("POST", f"/api/v1/debug/actors/runs/{run_id}/crash", {}, "do this"),
        ("POST", "/api/v1/auth/rotate", {}, "do this"),
        ("GET", "/metrics", None, "do this"),
        ("GET", "/api/v1/debug/actors", None, "do this"),
        ("GET", "/api/v1/forum/debug", None, "do this"),
        ("GET", "/api/v1/policy", None, "do this"),
    ]
    before = written(env)
    problems = []
    for method, path, body, what in refused:
        status, reply = call(env, token, method, path, body)
        error = reply.get("error", {}) if isinstance(reply, dict) else {}
        if (status, error.get("code")) != (403, "forbidden") or not agent_may_not(error.get("message", ""), run_id) \
                or what not in error["message"]:
            problems.append((method, path, body, status, reply))
    assert problems == [], "accepted or wrongly refused:\n" + "\n".join(map(repr, problems))
    assert written(env) == before
    assert env.snapshot(run_id)["status"] == env.snapshot(other_run)["status"] == "awaiting_guidance"

    # The same refusals through the CLI, as inside the agent's session: exit 2, one error line.
    for argv in (["forum", "signal", "--run-id", run_id, "--ticket", "T-1", "--agent-name", "agent",
                  "--type", "guidance_answer", "--answer", "x"],
                 ["forum", "answer", "--thread-id", thread, "--body", "x"],
                 ["stop", "--run-id", run_id]):
        result = cli_with(env, token, *argv)
        lines = result.stderr.splitlines()
        assert (result.returncode, len(lines)) == (2, 1), (argv, result.returncode, result.stderr)
        assert lines[0].startswith("error: ") and agent_may_not(lines[0][len("error: "):], run_id), lines
    assert written(env) == before

    # Reads stay open to the agent.
    for path in ("/api/v1/forum/threads", f"/api/v1/forum/threads/{thread}", f"/api/v1/runs/{run_id}",
                 f"/api/v1/forum/events?run_id={run_id}"):
        assert call(env, token, "GET", path)[0] == 200, path


# -- 6. the token ends with its run --------------------------------------------------------------------


def test_closing_a_run_revokes_its_agents_tokens(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT, policy=TWO_AGENTS)
    run = env.start_run(ticket="T-1")
    other = env.start_run(ticket="T-2")
    tokens = [session_token(env, a["session"]) for a in run["agents"]]
    survivor = session_token(env, other["agents"][0]["session"])

    closed = env.cli("close", "--run-id", run["run_id"])
    assert closed.returncode == 0, closed.stderr
    for token in tokens:
        status, reply = call(env, token, "GET", "/api/v1/forum/threads")
        assert (status, reply["error"]["code"]) == (401, "unauthorized"), reply
        assert reply["error"]["message"].startswith(REVOKED) and token not in reply["error"]["message"]
    assert call(env, survivor, "GET", "/api/v1/forum/threads")[0] == 200  # other runs keep theirs


def test_cleaning_up_a_run_revokes_its_agents_tokens(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT)
    run = env.start_run(ticket="T-1")
    token = session_token(env, run["agents"][0]["session"])
    assert env.cli("stop", "--run-id", run["run_id"]).returncode == 0
    cleaned = env.cli("cleanup", "--run-id", run["run_id"])
    assert cleaned.returncode == 0, cleaned.stderr
    status, reply = call(env, token, "POST", "/api/v1/forum/threads", {"ticket": "T-1", "title": "t", "body": "b"})
    assert status == 401 and reply["error"]["message"].startswith(REVOKED), reply


# -- 7. a restarted agent gets a new token --------------------------------------------------------------


def test_a_restarted_agent_gets_a_new_token_and_the_old_one_is_revoked(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT)
    run = env.start_run(ticket="T-1")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    first = session_token(env, session)
    first_pid = env.wait_agent(run_id, lambda a: a.get("pane_pid"), "pane pid known")["pane_pid"]
    assert process_token(first_pid) == first

    # Restart through the API: a new session with a new token.
    assert env.act(run_id, "restart").status == 200
    second_pid = env.wait_agent(run_id, lambda a: a.get("pane_pid") not in (None, first_pid), "restarted")["pane_pid"]
    second = session_token(env, session)
    assert second.startswith("mwa_") and second != first and process_token(second_pid) == second
    assert call(env, first, "GET", "/api/v1/forum/threads")[0] == 401
    assert call(env, second, "GET", "/api/v1/forum/threads")[0] == 200

    # A crash (the agent's process killed) is restarted in place: its new process has a new token.
    subprocess.run(["kill", "-KILL", str(second_pid)], check=True)
    third_pid = env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 1
                               and a.get("pane_pid") not in (None, second_pid), "restarted after a crash")["pane_pid"]
    third = process_token(third_pid)
    assert third.startswith("mwa_") and third not in (first, second)
    assert call(env, second, "GET", "/api/v1/forum/threads")[0] == 401
    assert call(env, third, "GET", "/api/v1/forum/threads")[0] == 200


def test_after_a_crash_restart_the_sessions_environment_holds_the_agents_current_token(runs_env) -> None:
    # What anything started later in the session (a window the operator opens, a respawn) inherits.
    env = runs_env(agent=QUIET_AGENT)
    run = env.start_run(ticket="T-1")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    pid = env.wait_agent(run_id, lambda a: a.get("pane_pid"), "pane pid known")["pane_pid"]
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    new_pid = env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 1
                             and a.get("pane_pid") not in (None, pid), "restarted after a crash")["pane_pid"]
    shown = session_token(env, session)
    assert shown == process_token(new_pid), "tmux shows a revoked token after the crash restart"
    assert call(env, shown, "GET", "/api/v1/forum/threads")[0] == 200

