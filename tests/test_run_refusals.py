"""Run actions that cannot apply are refused (409/410 with the reason), never crashes.

Real daemon, real tmux (private socket), real git, script agents (tests/support/agents.py).
The bug this guards: resuming a cleaned-up run crashed the run's actor (tmux cannot start a
session in a workspace that is gone); repeated, the crashes exhausted the runs supervisor's
restart intensity, it gave up, and every other run request got 503 while it restarted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from support.agents import LONG_AGENT, RunsEnv, find_node


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in node.get("children", []) for n in _nodes(child))]


def runs_supervisor(env: RunsEnv) -> dict[str, Any]:
    node = find_node(env.actors(), "RunSupervisor")
    assert node is not None, env.actors()
    return node


def assert_runs_healthy(env: RunsEnv) -> None:
    """root/runs and everything under it running, no restart counted anywhere, health agrees."""
    tree = runs_supervisor(env)
    troubled = [(n["path"], n["state"], n["restarts"], n.get("last_failure")) for n in _nodes(tree)
                if n["state"] != "running" or n["restarts"]]
    assert not troubled, troubled
    health = env.api("GET", "/api/v1/health").data
    assert health["actors"]["restarting"] == 0 and health["actors"]["restarts_total"] == 0, health
    log = env.serve.log()
    assert "gave up" not in log and "crashed" not in log and "Traceback" not in log, log[-3000:]


def refused(result: Any, status: int, code: str) -> str:
    assert result.status == status, result
    assert result.data["error"]["code"] == code, result
    return str(result.data["error"]["message"])


def test_resume_after_cleanup_is_refused_every_time_and_leaves_the_runs_supervisor_healthy(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run_id = env.start_run()["run_id"]
    workspace = env.agent(run_id)["workspace"]
    assert env.act(run_id, "stop").status == 200
    assert env.act(run_id, "cleanup").status == 200
    assert not (env.workspace_root / workspace).exists()

    for _ in range(20):
        message = refused(env.act(run_id, "resume"), 410, "run_cleaned_up")
        assert message == (f"run {run_id} was cleaned up: workspace {workspace} is removed, so it cannot be "
                           "resumed; start a new run (the branch keeps the work)")
    message = refused(env.act(run_id, "restart"), 410, "run_cleaned_up")
    assert "cannot be restarted" in message

    # The CLI says the same in one line and exits 2 (a 4xx: this cannot be done to this run).
    cli = env.cli("resume", "--run-id", run_id)
    assert (cli.returncode, cli.stdout) == (2, "")
    assert cli.stderr == f"error: run {run_id} was cleaned up: workspace {workspace} is removed, so it cannot be " \
                         "resumed; start a new run (the branch keeps the work)\n"

    # Nothing changed, nothing restarted, and the daemon still starts runs.
    snapshot = env.snapshot(run_id)
    assert snapshot["status"] == "stopped" and snapshot["agents"][0]["status"] == "cleaned"
    assert env.sessions() == []
    assert_runs_healthy(env)
    other = env.start_run(ticket="T-2")
    assert other["status"] == "running" and other["agents"][0]["session"] in env.sessions()
    assert_runs_healthy(env)

    # What still applies to a cleaned-up run: cleanup again (nothing left to remove), stop, close.
    again = env.act(run_id, "cleanup")
    assert again.status == 200 and again.data["cleanup"]["run_id"] == run_id, again
    assert env.act(run_id, "stop").status == 200
    closed = env.act(run_id, "close")
    assert closed.status == 200 and closed.data["run"]["status"] == "closed", closed
    assert_runs_healthy(env)


def test_wrong_state_actions_are_refused_with_the_reason(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run_id = env.start_run()["run_id"]
    env.wait_pane_output(env.agent(run_id)["session"], "started in")

    # A running run: cleanup needs it stopped first; resume is a no-op; an unknown agent is bad input.
    message = refused(env.act(run_id, "cleanup"), 409, "run_busy")
    assert message == f"run {run_id} is running; stop or close it before cleanup"
    assert env.act(run_id, "resume").status == 200
    refused(env.act(run_id, "restart", agent="nobody"), 400, "run_failed")
    dry = env.act(run_id, "cleanup", dry_run=True)
    assert dry.status == 409, dry  # a dry run is refused the same way

    # Stopped twice is stopped; closed, then every action but close and cleanup is refused.
    assert env.act(run_id, "stop").status == 200
    assert env.act(run_id, "stop").status == 200
    closed = env.act(run_id, "close")
    assert closed.status == 200 and closed.data["run"]["status"] == "closed", closed
    for action, done in (("stop", "stopped"), ("resume", "resumed"), ("restart", "restarted")):
        message = refused(env.act(run_id, action), 409, "run_transition_refused")
        assert message == f"run {run_id} is closed; it cannot be {done}"
    assert env.act(run_id, "close").status == 200  # closing a closed run is a no-op
    assert env.act(run_id, "cleanup").status == 200
    refused(env.act(run_id, "resume"), 409, "run_transition_refused")  # closed comes before cleaned up

    # A workspace removed behind the daemon's back: resume and restart say so (410), nothing crashes.
    other = env.start_run(ticket="T-2")
    other_id, path = other["run_id"], Path(other["agents"][0]["workspace_path"])
    assert env.act(other_id, "stop").status == 200
    shutil.rmtree(path)
    for action, done in (("resume", "resumed"), ("restart", "restarted")):
        message = refused(env.act(other_id, action), 410, "workspace_gone")
        assert message == f"run {other_id} cannot be {done}: the workspace of agent agent, {path}, does not exist"
    assert env.snapshot(other_id)["status"] == "stopped"

    # A cleanup that kept the workspaces leaves a run that can be resumed.
    kept_id = env.start_run(ticket="T-3")["run_id"]
    assert env.act(kept_id, "stop").status == 200
    assert env.act(kept_id, "cleanup", keep_workspaces=True).status == 200
    resumed = env.act(kept_id, "resume")
    assert resumed.status == 200 and resumed.data["run"]["status"] == "running", resumed
    assert env.agent(kept_id)["status"] == "running" and env.agent(kept_id)["session"] in env.sessions()
    assert_runs_healthy(env)


def test_a_session_that_cannot_start_fails_the_action_not_the_run(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run_id = env.start_run()["run_id"]
    session = env.agent(run_id)["session"]
    env.wait_pane_output(session, "started in")
    # The agents' log directory is in the way (a file where it should be): the agent actor cannot
    # start a session, says why, and both it and the run's actor carry on.
    logs = env.daemon_dir / ".metawsm" / "logs"
    logs.rename(logs.with_name("logs.moved"))
    logs.write_text("not a directory\n")
    try:
        message = refused(env.act(run_id, "restart"), 400, "run_failed")
        assert message.startswith(f"agent agent@{env.agent(run_id)['workspace']} could not start its session: ")
        assert str(logs) in message
        agent = env.agent(run_id)
        assert agent["status"] == "failed" and agent["last_error"] == message, agent
        assert env.snapshot(run_id)["status"] == "running"
    finally:
        logs.unlink()
        logs.with_name("logs.moved").rename(logs)
    # Once the directory is back, the same action works: a fresh session, watched again.
    restarted = env.act(run_id, "restart")
    assert restarted.status == 200, restarted
    env.wait_agent(run_id, lambda a: a["status"] == "running" and a.get("health") == "healthy", "running again")
    assert session in env.sessions()
    assert_runs_healthy(env)
