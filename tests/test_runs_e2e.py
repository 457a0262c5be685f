"""Runs end to end: a real `metawsm serve`, real tmux (private socket), real git, script agents.

Each test gets its own daemon, Redis namespace and tmux server (``mw-<namespace>``, killed on
teardown).  The agents are bash scripts (tests/support/agents.py) that print, commit and post
control signals through ``metawsm forum signal``, as a real agent would.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import time
from pathlib import Path

from metawsm.waiting import wait_until
from support.agents import (
    BRIEF_FLAGS,
    CRASH_AGENT,
    DONE,
    FINISH_AGENT,
    GUIDANCE_AGENT,
    LONG_AGENT,
    QUIET_AGENT,
    RunsEnv,
    branches,
    find_node,
    git,
    worktree_paths,
)


def transitions(env: RunsEnv, run_id: str) -> list[tuple[str, str]]:
    """The run's recorded status transitions, oldest first (read straight from the daemon's DB)."""
    with sqlite3.connect(env.serve.db_path) as conn:
        rows = conn.execute("SELECT from_status, to_status FROM events WHERE run_id = ? AND kind = 'transition'"
                            " ORDER BY id", (run_id,)).fetchall()
    return [(a, b) for a, b in rows]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- 1. the whole bootstrap lifecycle ----------------------------------------------------------


def test_bootstrap_guidance_completion_close_cleanup(runs_env) -> None:
    env = runs_env(agent=GUIDANCE_AGENT, done=DONE)
    started = env.cli("bootstrap", "--ticket", "T-1", "--repos", env.repo_name, *BRIEF_FLAGS, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["run"]
    run_id = run["run_id"]
    assert run["mode"] == "bootstrap"
    assert [s["status"] for s in run["steps"]] == ["done"] * len(run["steps"])
    [agent] = run["agents"]
    session, workspace, path = agent["session"], agent["workspace"], Path(agent["workspace_path"])
    assert session == f"agent-{workspace}" and agent["socket"] == env.socket
    assert session in env.sessions()
    assert path == env.workspace_root / workspace / env.repo_name and path.is_dir()
    # The brief and the run file are in the workspace before the agent starts.
    meta = env.workspace_root / workspace / ".metawsm"
    run_file = json.loads((meta / "run.json").read_text())
    assert run_file["run_id"] == run_id and run_file["brief_path"] == str(meta / "brief.md")
    assert DONE in (meta / "brief.md").read_text()
    assert (path / "ttmp" / "T-1" / "index.md").is_file()  # builtin docs seeded (and committed)

    # The agent asks: the run waits for guidance and status shows the question and the command.
    snap = env.wait_status(run_id, "awaiting_guidance")
    [pending] = snap["pending_guidance"]
    expected = (f"metawsm forum signal --run-id {run_id} --ticket T-1 --agent-name agent "
                f'--type guidance_answer --answer "<your answer>"')
    assert pending["question"] == "Which database should I use?"
    assert pending["context"] == "postgres or sqlite"
    assert pending["answer_command"] == expected
    status = env.cli("status", "--run-id", run_id)
    assert status.returncode == 0, status.stderr
    assert "awaiting_guidance" in status.stdout.splitlines()[0]
    assert "agent: Which database should I use?" in status.stdout
    assert f"answer with: {expected}" in status.stdout
    assert snap["agents"][0]["health"] == "healthy"

    # Answer with exactly the command status printed.
    argv = shlex.split(expected.replace("<your answer>", "Use SQLite"))
    assert argv[0] == "metawsm"
    answered = env.cli(*argv[1:])
    assert answered.returncode == 0, answered.stderr

    # The agent gets the answer, commits, posts completion and a passed validation: completed.
    snap = env.wait_status(run_id, "completed", timeout=30)
    assert snap.get("pending_guidance", []) == []  # empty lists are omitted, like empty strings
    assert (snap["agents"][0]["completion_signalled"], snap["agents"][0]["validation_status"],
            snap["agents"][0]["validation_done_criteria"]) == (True, "passed", DONE)
    assert transitions(env, run_id) == [
        ("created", "planning"), ("planning", "running"), ("running", "awaiting_guidance"),
        ("awaiting_guidance", "running"), ("running", "completed")]
    branch = f"task/{workspace}"
    assert git(env.repo, "show", f"{branch}:decision.txt") == "Use SQLite"
    log = git(env.repo, "log", "--format=%s", branch)
    assert "agent: apply the decision" in log and "agent: first step" in log
    text = env.cli("status", "--ticket", "T-1").stdout
    assert "completed" in text.splitlines()[0] and "passed" in text

    # Close passes the gates and ends the agent's session; cleanup removes the workspace.
    closed = env.cli("close", "--run-id", run_id)
    assert closed.returncode == 0, closed.stderr
    assert env.snapshot(run_id)["status"] == "closed"
    assert session not in env.sessions()
    assert env.cli("close", "--run-id", run_id).returncode == 0  # closing twice is fine
    cleaned = env.cli("cleanup", "--run-id", run_id)
    assert cleaned.returncode == 0, cleaned.stderr
    assert workspace in cleaned.stdout and session in cleaned.stdout
    assert env.sessions() == []
    assert worktree_paths(env.repo) == [env.repo.resolve()]
    assert not (env.workspace_root / workspace).exists()
    assert branch in branches(env.repo)  # the work is kept on its branch
    assert git(env.repo, "status", "--porcelain") == ""  # the user's checkout was never touched
    assert env.snapshot(run_id)["agents"][0]["status"] == "cleaned"


def test_agent_exiting_0_after_completion_is_stopped_not_dead(runs_env) -> None:
    env = runs_env(agent=FINISH_AGENT, done=DONE)
    run = env.start_run(mode="bootstrap", ticket="T-1")
    run_id = run["run_id"]
    env.wait_status(run_id, "completed")
    agent = env.wait_agent(run_id, lambda a: a["status"] == "stopped", "stopped after exiting 0")
    assert agent["health"] == "stopped" and agent.get("restarts_used", 0) == 0 and "pane_pid" not in agent
    assert env.snapshot(run_id)["status"] == "completed"
    assert env.act(run_id, "close").status == 200
    assert env.snapshot(run_id)["status"] == "closed" and env.sessions() == []


# -- 2. stop and resume --------------------------------------------------------------------------


def test_stop_and_resume(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    started = env.cli("run", "--ticket", "T-2", "--repos", env.repo_name, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["run"]
    run_id, session = run["run_id"], run["agents"][0]["session"]
    assert run["status"] == "running" and session in env.sessions()
    first_pid = env.wait_agent(run_id, lambda a: a.get("pane_pid") and a.get("last_activity_at"),
                               "pane pid and activity known")["pane_pid"]

    stopped = env.cli("stop", "--ticket", "T-2")
    assert stopped.returncode == 0, stopped.stderr
    snap = env.snapshot(run_id)
    assert snap["status"] == "stopped"
    assert snap["agents"][0]["status"] == "stopped" and "pane_pid" not in snap["agents"][0]
    assert session not in env.sessions()
    assert not _pid_alive(first_pid) or wait_until(lambda: not _pid_alive(first_pid), timeout=5)
    assert find_node(env.actors(run_id), "TmuxAgent[agent]") is None
    assert Path(run["agents"][0]["workspace_path"]).is_dir()  # stop keeps the workspace
    assert env.cli("stop", "--run-id", run_id).returncode == 0  # stopping twice is fine
    assert transitions(env, run_id)[-2:] == [("running", "stopping"), ("stopping", "stopped")]

    resumed = env.cli("resume", "--run-id", run_id)
    assert resumed.returncode == 0, resumed.stderr
    assert "running" in resumed.stdout.splitlines()[0]
    assert session in env.sessions()
    agent = env.wait_agent(run_id, lambda a: a["status"] == "running" and a.get("health") == "healthy"
                           and a.get("pane_pid"), "running again")
    assert agent["pane_pid"] != first_pid and agent["pane_pid"] == env.pane_pid(session)
    node = wait_until(lambda: find_node(env.actors(run_id), "TmuxAgent[agent]"), message="agent actor back")
    assert node["details"]["session"] == session
    assert env.cli("resume", "--run-id", run_id).returncode == 0  # resuming a running run: no-op
    assert env.sessions() == [session]
    assert transitions(env, run_id)[-1] == ("stopped", "running")


# -- 3. agents dying: restarted within budget; budget exhausted fails the agent and the run -------


def test_agent_killed_from_outside_is_restarted(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy={"operator": {"restart_budget_reset_seconds": 3}})
    run = env.start_run(ticket="T-3")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    first_pid = env.wait_agent(run_id, lambda a: a.get("pane_pid"), "pane pid known")["pane_pid"]

    # 1: the whole session disappears.
    killed = env.tmux("kill-session", "-t", f"={session}")
    assert killed.returncode == 0, killed.stderr
    agent = env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 1 and a["status"] == "running"
                           and a.get("health") == "healthy" and a.get("pane_pid") not in (None, first_pid),
                           "restarted after its session was killed")
    assert agent["restarts_left"] == 2 and agent["last_error"] == "restarted after it was dead"
    assert session in env.sessions() and env.pane_pid(session) == agent["pane_pid"]

    # 2: the agent's process is killed (the pane stays, dead: remain-on-exit).
    second_pid = agent["pane_pid"]
    os.kill(second_pid, signal.SIGKILL)
    agent = env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 2 and a.get("pane_pid") not in (None, second_pid)
                           and a.get("health") == "healthy", "restarted after its process was killed")
    assert env.sessions() == [session] and env.pane_pid(session) == agent["pane_pid"]
    node = find_node(env.actors(run_id), "TmuxAgent[agent]")
    assert node is not None and node["details"]["restarts_left"] == 1
    assert env.snapshot(run_id)["status"] == "running"
    assert "restarted it (2 restart(s) left)" in env.serve.log()
    text = env.cli("status", "--run-id", run_id).stdout
    assert "healthy" in text and "2/3" in text

    # After restart_budget_reset_seconds of good health the budget is full again.
    env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 0 and a["restarts_left"] == 3, "budget refilled",
                   timeout=15)
    assert find_node(env.actors(run_id), "TmuxAgent[agent]")["details"]["restarts_left"] == 3


def test_silent_agent_goes_idle_then_stalled_without_restarts(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT, policy={"health": {"idle_seconds": 0.6, "activity_stalled_seconds": 1.5}})
    run = env.start_run(ticket="T-3")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    seen: list[str] = []

    def health_is(value: str) -> bool:
        health = env.agent(run_id).get("health", "")
        if not seen or seen[-1] != health:
            seen.append(health)
        return health == value

    wait_until(lambda: health_is("stalled"), timeout=15, interval=0.02, message=f"stalled; seen {seen}")
    assert seen == ["healthy", "idle", "stalled"]  # never a flicker back and forth
    agent = env.agent(run_id)
    assert agent["status"] == "running" and agent.get("restarts_used", 0) == 0  # stalled is not restarted by default
    assert agent["last_activity_age_seconds"] >= 1.0
    assert env.sessions() == [session]
    assert "stalled" in env.cli("status", "--run-id", run_id).stdout
    # Activity brings it back at once (promotions are immediate).
    env.tmux("send-keys", "-t", f"={session}:", "x")
    env.wait_agent(run_id, lambda a: a.get("health") == "healthy", "healthy after output", timeout=5)


def test_restart_budget_exhausted_fails_agent_and_bootstrap_run(runs_env) -> None:
    env = runs_env(agent=CRASH_AGENT, policy={"operator": {"restart_budget": 2}})
    run = env.start_run(mode="bootstrap", ticket="T-4")
    run_id, workspace = run["run_id"], run["agents"][0]["workspace"]
    snap = env.wait_status(run_id, "failed", timeout=30)
    [agent] = snap["agents"]
    assert agent["status"] == "failed" and agent.get("restarts_used", 0) == 2 and agent["restarts_left"] == 0
    assert agent["last_error"] == "restart budget exhausted (2 of 2 used); agent failed"
    assert snap["error"] == f"agent agent@{workspace} failed: restart budget exhausted (2 of 2 used)"
    text = env.cli("status", "--run-id", run_id).stdout
    assert "failed" in text.splitlines()[0] and snap["error"] in text
    assert "crashing" in (env.daemon_dir / ".metawsm" / "logs" / f"{agent['session']}.log").read_text()

    # Resuming the failed run gives the agent a fresh budget and watches it again: it crashes
    # twice more, is restarted twice more, and fails the run again.
    resumed = env.cli("resume", "--run-id", run_id)
    assert resumed.returncode == 0, resumed.stderr
    wait_until(lambda: transitions(env, run_id)[-2:] == [("failed", "running"), ("running", "failed")],
               timeout=30, message="resumed run to fail again")
    assert env.agent(run_id)["status"] == "failed" and env.agent(run_id)["restarts_used"] == 2


# -- 4. the daemon dies (SIGKILL) and comes back: it re-attaches ---------------------------------


def test_daemon_killed_and_restarted_reattaches_to_live_sessions(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run(ticket="T-5")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    pid = env.wait_agent(run_id, lambda a: a.get("pane_pid") and a.get("last_activity_at"), "watched")["pane_pid"]

    env.serve.kill()  # SIGKILL: no clean shutdown at all
    assert env.sessions() == [session] and _pid_alive(pid)  # the agent does not notice
    env.serve.start()

    node = wait_until(lambda: find_node(env.actors(), "TmuxAgent[agent]"), message="agent actor back")
    assert find_node(env.actors(), f"Run[{run_id}]") is not None  # in /api/v1/debug/actors
    sub = env.actors(run_id)
    assert sub["name"] == f"Run[{run_id}]" and sub["state"] == "running"
    assert sub["details"]["status"] == "running" and sub["details"]["mode"] == "run"
    def watched() -> dict | None:
        found = find_node(env.actors(run_id), "TmuxAgent[agent]")
        return found["details"] if found and found["details"].get("last_activity_at") else None

    details = wait_until(watched, message="activity seen after re-attach")
    # The detached agent keeps printing: its activity time keeps moving (window_activity / log mtime).
    wait_until(lambda: watched()["last_activity_at"] > details["last_activity_at"], timeout=5,
               message="activity to move")
    assert details["session"] == session and details["pane_pid"] == pid
    assert details["health"] == "healthy" and details["restarts_left"] == 3
    assert node["state"] == "running"
    assert env.sessions() == [session] and env.pane_pid(session) == pid  # same process, no new session
    agent = env.agent(run_id)
    assert agent.get("restarts_used", 0) == 0 and agent["pane_pid"] == pid and agent["status"] == "running"
    assert f"re-attached to tmux session {session}" in env.serve.log()
    assert env.snapshot(run_id)["status"] == "running"
    debug = env.cli("debug", "actors", "--run-id", run_id)
    assert debug.returncode == 0 and f"session={session}" in debug.stdout and f"pane_pid={pid}" in debug.stdout

    # Dead while the daemon was down: found dead on start and restarted under the restart policy.
    env.serve.kill()
    assert env.tmux("kill-session", "-t", f"={session}").returncode == 0
    env.serve.start()
    agent = env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 1 and a.get("health") == "healthy"
                           and a.get("pane_pid") not in (None, pid), "restarted after the daemon restart")
    assert env.sessions() == [session] and env.pane_pid(session) == agent["pane_pid"]

    # Still fully controllable after all that.
    assert env.cli("stop", "--run-id", run_id).returncode == 0
    assert env.sessions() == []


# -- 6. --dry-run: the plan and nothing else ------------------------------------------------------

RUN_TABLES = ("runs", "run_steps", "run_agents", "run_briefs", "events")


def _row_counts(env: RunsEnv) -> dict[str, int]:
    with sqlite3.connect(env.serve.db_path) as conn:
        return {table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in RUN_TABLES}


def test_dry_run_leaves_no_trace(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    before_files = sorted(p.relative_to(env.daemon_dir) for p in env.daemon_dir.rglob("*")
                          if ".metawsm/metawsm.db" not in str(p) and p.name != "serve.log")
    for argv in (["run", "--ticket", "T-6", "--repos", env.repo_name, "--dry-run"],
                 ["bootstrap", "--ticket", "T-6", "--repos", env.repo_name, *BRIEF_FLAGS, "--dry-run"]):
        result = env.cli(*argv)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith("run_") and lines[0].endswith("planned")
        for step in ("verify_ticket", "provision_workspace", "seed_docs", "write_run_file", "start_agent:agent"):
            assert step in result.stdout
        planned = json.loads(env.cli(*argv, "--json").stdout)["run"]
        assert planned["dry_run"] is True and planned["status"] == "planned"
        assert [s["status"] for s in planned["steps"]] == ["planned"] * 5
        assert planned["agents"][0]["session"].startswith("agent-t-6-")

    assert _row_counts(env) == dict.fromkeys(RUN_TABLES, 0)
    no_server = env.tmux("ls")
    assert no_server.returncode != 0 and ("no server running" in no_server.stderr
                                          or "error connecting" in no_server.stderr)
    assert worktree_paths(env.repo) == [env.repo.resolve()] and branches(env.repo) == ["main"]
    assert not env.workspace_root.exists()
    after_files = sorted(p.relative_to(env.daemon_dir) for p in env.daemon_dir.rglob("*")
                         if ".metawsm/metawsm.db" not in str(p) and p.name != "serve.log")
    assert after_files == before_files
    assert git(env.repo, "status", "--porcelain") == ""
    assert env.api("GET", "/api/v1/runs").data == {"runs": []}


# -- 8. the runbook's bring-up, verbatim ----------------------------------------------------------

RUNBOOK = """\
metawsm forum ask --run-id RUN_ID --ticket METAWSM-002 --title "Question" --body "Need guidance"
metawsm forum list --run-id RUN_ID
metawsm forum thread --thread-id THREAD_ID
metawsm forum signal --run-id RUN_ID --ticket METAWSM-002 --agent-name agent --type guidance_request --question "Need decision"
metawsm forum signal --run-id RUN_ID --ticket METAWSM-002 --agent-name agent --type guidance_answer --answer "Proceed"
metawsm forum signal --run-id RUN_ID --ticket METAWSM-002 --agent-name agent --type completion --summary "Implementation complete"
metawsm forum signal --run-id RUN_ID --ticket METAWSM-002 --agent-name agent --type validation --status passed --done-criteria "tests pass"
"""


def test_runbook_bring_up(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, repo="metawsm")
    started = env.cli("bootstrap", "--ticket", "METAWSM-002", "--repos", "metawsm", "--doc-home-repo", "metawsm",
                      *BRIEF_FLAGS)
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    assert run_id.startswith("run_") and "running" in started.stdout.splitlines()[0]
    env.wait_agent(run_id, lambda a: a["status"] == "running", "agent up")

    lines = RUNBOOK.splitlines()
    thread_id = ""
    expected_status = {3: "awaiting_guidance", 4: "running", 6: "completed"}
    for index, line in enumerate(lines):
        argv = shlex.split(line.replace("RUN_ID", run_id).replace("THREAD_ID", thread_id))
        assert argv[0] == "metawsm"
        result = env.cli(*argv[1:])
        assert result.returncode == 0, f"{line}: {result.stderr}"
        if index == 0:
            thread_id = result.stdout.split()[0]
            assert thread_id.startswith("fthr_")
        elif index == 1:
            assert thread_id in result.stdout and "Question" in result.stdout
        elif index == 2:
            assert "Question" in result.stdout and "Need guidance" in result.stdout
        if index in expected_status:
            env.wait_status(run_id, expected_status[index])
        if index == 3:
            text = env.cli("status", "--run-id", run_id).stdout
            assert "Need decision" in text and "--type guidance_answer" in text

    closed = env.cli("close", "--ticket", "METAWSM-002")
    assert closed.returncode == 0, closed.stderr
    assert env.snapshot(run_id)["status"] == "closed"
    assert env.cli("cleanup", "--ticket", "METAWSM-002").returncode == 0
    assert env.sessions() == [] and worktree_paths(env.repo) == [env.repo.resolve()]


# -- 9. guidance_request -> awaiting_guidance latency ---------------------------------------------


def test_guidance_request_latency(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run(ticket="T-9")
    run_id = run["run_id"]

    def signal_and_wait(control: dict[str, str], status: str) -> float:
        body = {"run_id": run_id, "ticket": "T-9", "agent_name": "agent",
                "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent", **control}}
        start = time.perf_counter()
        result = env.api("POST", "/api/v1/forum/control/signal", body)
        assert result.status in (200, 202), result
        wait_until(lambda: env.snapshot(run_id)["status"] == status, timeout=5, interval=0.002,
                   message=f"run to become {status}")
        return time.perf_counter() - start

    asked = signal_and_wait({"control_type": "guidance_request", "question": "Need decision"}, "awaiting_guidance")
    answered = signal_and_wait({"control_type": "guidance_answer", "answer": "Proceed"}, "running")
    print(f"\nguidance_request -> awaiting_guidance visible in GET /api/v1/runs/{{id}}: {asked * 1000:.1f} ms; "
          f"guidance_answer -> running: {answered * 1000:.1f} ms")
    assert asked < 2.0 and answered < 2.0
