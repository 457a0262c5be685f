"""``metawsm attach`` and the attach line of ``status``, against real tmux and a real daemon."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

from support.agents import LONG_AGENT, PYTHON, PtySession, RunsEnv

TWO_AGENTS = {
    "agents": [{"name": "agent", "profile": "script"}, {"name": "reviewer", "profile": "script"}],
}


def _run(env: RunsEnv, *tickets: str) -> dict[str, Any]:
    flags = [part for ticket in tickets for part in ("--ticket", ticket)]
    result = env.cli("run", *flags, "--repos", env.repo_name, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["run"]


def _has_session_argv(command: str) -> list[str]:
    """The printed attach command with ``attach-session`` swapped for ``has-session``."""
    argv = shlex.split(command)
    assert argv.count("attach-session") == 1, argv
    return ["has-session" if part == "attach-session" else part for part in argv]


def _error(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    return result.returncode, result.stderr


def test_attach_off_a_terminal_prints_a_command_that_names_the_agents_live_session(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = _run(env, "T-1")
    session = run["agents"][0]["session"]
    expected = f"tmux -L {env.socket} attach-session -t ={session}"

    result = env.cli("attach", "--ticket", "T-1")
    assert (result.returncode, result.stdout, result.stderr) == (0, expected + "\n", "")
    assert subprocess.run(_has_session_argv(result.stdout), capture_output=True, timeout=10).returncode == 0
    assert env.cli("attach", "--run-id", run["run_id"], "--agent", "agent").stdout == expected + "\n"

    # status shows the same command, and its JSON carries it (with the agent's ticket).
    status = env.cli("status", "--ticket", "T-1")
    assert status.returncode == 0, status.stderr
    assert f"attach: {expected}" in status.stdout.splitlines()
    [agent] = json.loads(env.cli("status", "--ticket", "T-1", "--json").stdout)["run"]["agents"]
    assert (agent["attach_command"], agent["ticket"]) == (expected, "T-1")

    # A stopped run has no session to attach to: no attach line, and attach says why.
    assert env.cli("stop", "--ticket", "T-1").returncode == 0
    assert "attach:" not in env.cli("status", "--ticket", "T-1").stdout
    assert _error(env.cli("attach", "--ticket", "T-1")) == (
        1, f'error: agent "agent" of run {run["run_id"]} has no tmux session (status stopped); '
           "resume or restart the run first\n")


def test_attach_refuses_what_does_not_name_exactly_one_agent_with_exit_2(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy=TWO_AGENTS)
    run = _run(env, "T-1")
    run_id = run["run_id"]
    sessions = {a["name"]: a["session"] for a in run["agents"]}

    assert _error(env.cli("attach", "--ticket", "T-1")) == (
        2, f"error: run {run_id} has 2 agents (agent, reviewer); choose one with --agent\n")
    assert _error(env.cli("attach", "--ticket", "T-1", "--agent", "ghost")) == (
        2, f'error: run {run_id} has no agent "ghost"; its agents: agent, reviewer\n')
    assert _error(env.cli("attach", "--ticket", "NOPE-1")) == (2, "error: no run found for ticket NOPE-1\n")
    assert _error(env.cli("attach", "--run-id", run_id, "--ticket", "T-2", "--agent", "agent")) == (
        2, f'error: run {run_id} has no ticket "T-2"; its tickets: T-1\n')
    assert _error(env.cli("attach")) == (2, "error: select a run with --run-id RUN_ID or --ticket TICKET\n")

    reviewer = env.cli("attach", "--ticket", "T-1", "--agent", "reviewer")
    assert reviewer.stdout == f"tmux -L {env.socket} attach-session -t ={sessions['reviewer']}\n"
    status = env.cli("status", "--run-id", run_id).stdout.splitlines()
    for session in sessions.values():
        assert f"attach: tmux -L {env.socket} attach-session -t ={session}" in status


def test_attach_picks_the_agents_session_for_the_ticket_in_a_run_with_several(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = _run(env, "T-1", "T-2")
    run_id = run["run_id"]
    by_ticket = {a["ticket"]: a["session"] for a in env.snapshot(run_id)["agents"]}
    assert sorted(by_ticket) == ["T-1", "T-2"] and by_ticket["T-1"] != by_ticket["T-2"]

    for ticket in ("T-1", "T-2"):
        result = env.cli("attach", "--run-id", run_id, "--ticket", ticket)
        assert result.stdout == f"tmux -L {env.socket} attach-session -t ={by_ticket[ticket]}\n", result.stderr
        assert subprocess.run(_has_session_argv(result.stdout), capture_output=True, timeout=10).returncode == 0
    assert _error(env.cli("attach", "--run-id", run_id)) == (
        2, f'error: agent "agent" of run {run_id} works on several tickets (T-1, T-2); choose one with --ticket\n')


def test_attach_on_a_terminal_becomes_a_tmux_client_of_the_agents_session(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    session = _run(env, "T-1")["agents"][0]["session"]
    terminal = PtySession([PYTHON, "-m", "metawsm", "attach", "--ticket", "T-1"], env.repo,
                          dict(env.cli_env(), TERM="xterm"))
    try:
        terminal.wait(lambda: env.clients() == [session], "a client attached to the agent's session")
        assert env.tmux("detach-client", "-s", f"={session}").returncode == 0
        code, _ = terminal.finish(timeout=20)
        assert code == 0  # the process was tmux itself: detaching ends it normally
        assert env.sessions() == [session]  # detaching leaves the agent running
    finally:
        terminal.close()


def test_attach_inside_a_pane_of_the_same_server_switches_that_client(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    session = _run(env, "T-1")["agents"][0]["session"]
    # An operator's session on the agents' server; its pane runs attach once Enter is pressed.
    attach = shlex.join([PYTHON, "-m", "metawsm", "attach", "--ticket", "T-1"])
    created = env.tmux("new-session", "-d", "-s", "operator", "-c", str(env.repo), "-e", f"METAWSM_SERVER={env.url}",
                       "--", "sh", "-c", f"read line; exec {attach}")
    assert created.returncode == 0, created.stderr
    terminal = PtySession(["tmux", "-L", env.socket, "attach-session", "-t", "=operator"], env.repo,
                          dict(env.cli_env(), TERM="xterm"))
    try:
        terminal.wait(lambda: env.clients() == ["operator"], "a client on the operator session")
        assert env.tmux("send-keys", "-t", "=operator:", "Enter").returncode == 0
        terminal.wait(lambda: env.clients() == [session], "the same client switched to the agent's session")
    finally:
        terminal.close()


def test_attach_inside_another_tmux_prints_the_command_instead_of_nesting(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    session = _run(env, "T-1")["agents"][0]["session"]
    terminal = PtySession([PYTHON, "-m", "metawsm", "attach", "--ticket", "T-1"], env.repo,
                          dict(env.cli_env(), TERM="xterm", TMUX="/tmp/tmux-0/someone-elses,1,0"))
    try:
        code, output = terminal.finish(timeout=30)
    finally:
        terminal.close()
    assert code == 0, output
    assert output.splitlines() == [
        f"tmux -L {env.socket} attach-session -t ={session}",
        "note: this terminal is inside another tmux; run the command above outside it (or prefix it with TMUX= to nest)",
    ]
    assert env.clients() == []
