"""The run commands as a user types them: selection, bootstrap intake, restart, cleanup options."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support.agents import (
    BRIEF,
    BRIEF_FLAGS,
    LONG_AGENT,
    PYTHON,
    PtySession,
    RunsEnv,
    worktree_paths,
)

LABELS = [("--goal", "Goal"), ("--scope", "Scope"), ("--done-criteria", "Done criteria"),
          ("--constraints", "Constraints"), ("--merge-intent", "Merge intent")]


def _flags_without(flag: str) -> list[str]:
    out: list[str] = []
    for name, value in zip(BRIEF_FLAGS[::2], BRIEF_FLAGS[1::2]):
        if name != flag:
            out += [name, value]
    return out


# -- bootstrap intake ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,label", LABELS)
def test_bootstrap_non_interactive_missing_field(flag: str, label: str, tmp_path: Path) -> None:
    # No daemon at all: the intake is refused before anything is sent.
    result = subprocess.run(
        [PYTHON, "-m", "metawsm", "bootstrap", "--ticket", "T-1", "--repos", "app", *_flags_without(flag),
         "--server", "http://127.0.0.1:9"],
        cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f'error: missing required bootstrap intake field "{label}"; '
                             "provide all fields via flags in non-interactive mode\n")


def test_bootstrap_interactive_intake_on_a_terminal(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    session = PtySession([PYTHON, "-m", "metawsm", "bootstrap", "--ticket", "T-1", "--repos", env.repo_name,
                          "--goal", BRIEF["goal"]], env.repo, env.cli_env())
    session.expect("Scope: ")
    session.send("")  # an empty answer is asked again
    session.expect("Scope: ")
    session.send(BRIEF["scope"])
    for label in ("Done criteria", "Constraints", "Merge intent"):
        session.expect(f"{label}: ")
        session.send(BRIEF[label.lower().replace(" ", "_")])
    session.expect("Question to record for the agents (empty to finish): ")
    session.send("Which database?")
    session.expect("Answer: ")
    session.send("SQLite")
    session.expect("Question to record for the agents (empty to finish): ")
    session.send("")
    code, output = session.finish()
    assert code == 0, output
    first = next(line for line in output.splitlines() if line.startswith("run_"))
    run_id = first.split()[0]
    assert "bootstrap" in first
    brief = env.snapshot(run_id)["brief"]
    assert brief == {**BRIEF, "qa": [{"question": "Which database?", "answer": "SQLite"}]}
    workspace = env.snapshot(run_id)["agents"][0]["workspace"]
    written = (env.workspace_root / workspace / ".metawsm" / "brief.md").read_text()
    assert "- Q: Which database?" in written and "A: SQLite" in written


# -- selection, restart, cleanup options -----------------------------------------------------------


def _start(env: RunsEnv, ticket: str) -> str:
    result = env.cli("run", "--ticket", ticket, "--repos", env.repo_name, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["run"]["run_id"]


def _first_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[0]


def test_run_selection_restart_and_cleanup_options(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    older = _start(env, "T-7")
    newer = _start(env, "T-7")
    other = _start(env, "T-8")
    assert len({older, newer, other}) == 3

    # --ticket picks the latest run of that ticket; --run-id picks exactly that run.
    assert _first_line(env.cli("status", "--ticket", "T-7")).split()[0] == newer
    assert _first_line(env.cli("status", "--run-id", older)).split()[0] == older
    assert _first_line(env.cli("status", "--ticket", "T-8")).split()[0] == other
    assert json.loads(env.cli("status", "--ticket", "T-7", "--json").stdout)["run"]["run_id"] == newer
    for argv, message in (
        (["status"], "error: select a run with --run-id RUN_ID or --ticket TICKET\n"),
        (["status", "--ticket", "NOPE-1"], "error: no run found for ticket NOPE-1\n"),
        (["status", "--run-id", "run_missing"], "error: run run_missing not found\n"),
        (["stop", "--ticket", "NOPE-1"], "error: no run found for ticket NOPE-1\n"),
    ):
        result = env.cli(*argv)
        assert (result.returncode, result.stderr) == (2, message), argv

    # Actions follow the same selection: stop --ticket stops only the latest run of T-7.
    assert env.cli("stop", "--ticket", "T-7").returncode == 0
    assert env.snapshot(newer)["status"] == "stopped" and env.snapshot(older)["status"] == "running"
    sessions = {run_id: env.snapshot(run_id)["agents"][0]["session"] for run_id in (older, newer, other)}
    assert sorted(env.sessions()) == sorted([sessions[older], sessions[other]])

    # restart: a fresh process in the same session, budget refilled.
    pid = env.wait_agent(older, lambda a: a.get("pane_pid"), "pane pid")["pane_pid"]
    restarted = env.cli("restart", "--run-id", older, "--agent", "agent")
    assert restarted.returncode == 0, restarted.stderr
    agent = env.wait_agent(older, lambda a: a.get("pane_pid") not in (None, pid), "restarted")
    assert agent.get("restarts_used", 0) == 0 and agent["restarts_left"] == 3
    assert env.pane_pid(sessions[older]) == agent["pane_pid"]
    unknown = env.cli("restart", "--run-id", older, "--agent", "ghost")
    assert (unknown.returncode, unknown.stderr) == (2, f'error: run {older} has no agent "ghost"\n')

    # cleanup refuses a live run, keeps workspaces when asked, and has a dry run.
    busy = env.cli("cleanup", "--run-id", older)
    assert (busy.returncode, busy.stderr) == (2, f"error: run {older} is running; stop or close it before cleanup\n")
    workspace = env.workspace_root / env.snapshot(newer)["agents"][0]["workspace"]
    dry = env.cli("cleanup", "--run-id", newer, "--dry-run")
    assert dry.returncode == 0 and "(dry run)" in dry.stdout and workspace.is_dir()
    kept = env.cli("cleanup", "--run-id", newer, "--keep-workspaces")
    assert kept.returncode == 0, kept.stderr
    assert "workspaces removed\tkept" in kept.stdout and workspace.is_dir()
    assert (workspace / env.repo_name).resolve() in worktree_paths(env.repo)

    # debug actors: the run actor and its agent with session, pane pid, health, restarts left.
    tree = env.cli("debug", "actors", "--run-id", older)
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"Run[{older}]  running") and "status=running" in lines[0]
    assert lines[1].startswith("  TmuxAgent[agent]  running")
    for key in (f"session={sessions[older]}", f"pane_pid={agent['pane_pid']}", "health=", "last_activity_at=",
                "restarts_left=3"):
        assert key in lines[1], (key, lines[1])
    stopped = env.api("GET", f"/api/v1/runs/{newer}/actors").data["actors"]
    assert stopped["name"] == f"Run[{newer}]" and stopped["details"]["status"] == "stopped"

    # The API refuses an incomplete bootstrap brief with the same message as the CLI.
    refused = env.api("POST", "/api/v1/runs", {"mode": "bootstrap", "tickets": ["T-9"], "repos": [env.repo_name],
                                                 "cwd": str(env.repo), "brief": {**BRIEF, "scope": " "}})
    assert refused.status == 400
    assert refused.data["error"]["message"] == ('missing required bootstrap intake field "Scope"; '
                                                "provide all fields via flags in non-interactive mode")
