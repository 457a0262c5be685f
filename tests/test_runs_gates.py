"""Close gates: every refusal message exactly as runs.md words it.

First :func:`metawsm.runs.gates.close_blockers` on a prepared database (every gate, including
the two a run started through the API can never reach: no brief, empty done criteria), then the
same messages from ``metawsm close`` against a live daemon (exit 1, one ``error:`` line).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from metawsm.policy import policy_from_mapping
from metawsm.runs import store
from metawsm.runs.gates import close_blockers
from metawsm.runs.model import BriefRequest, RunRequest
from metawsm.runs.planner import plan_run
from metawsm.store import Database, write_transaction
from support.agents import BRIEF, BRIEF_FLAGS, DONE, LONG_AGENT, RunsEnv, git

# -- the gate function on a prepared database -----------------------------------------------------


def _insert(conn: sqlite3.Connection, mode: str = "bootstrap", *, brief: dict[str, str] | None = None,
            agents: tuple[str, ...] = ("agent",), policy: dict | None = None, base_dir: Path = Path("/nowhere"),
            status: str = "completed") -> tuple[str, str]:
    """A stored run (no actor, no tmux) with ``agents``; returns (run_id, workspace)."""
    data = policy or {"agent_profiles": [{"name": "p", "runner": "shell", "runner_options": {"command": "bash"}}],
                      "agents": [{"name": name, "profile": "p"} for name in agents]}
    request = RunRequest(mode=mode, tickets=["T-1"], repos=["app"],
                         brief=BriefRequest(**BRIEF) if mode == "bootstrap" else None)
    plan = plan_run(request, policy_from_mapping(data), policy_path="", server_url="http://x", base_dir=base_dir)
    stored_brief = plan.brief
    if mode == "bootstrap" and brief is not None:
        stored_brief = None if brief == {} else type(plan.brief)(**{**BRIEF, **brief})  # type: ignore[misc]  # the brief's type, built from a dict
    with write_transaction(conn):
        store.insert_run(conn, plan.spec, plan.steps, [(s.agent, s.workspace, s.session, s.workspace_path)
                                                      for s in plan.slots], stored_brief)
    path = {"completed": ("planning", "running", "completed"), "stopped": ("stopping", "stopped")}[status]
    for step in path:
        store.transition(conn, plan.spec.run_id, step)
    return plan.spec.run_id, plan.slots[0].workspace


def _signal(conn: sqlite3.Connection, run_id: str, agent: str = "agent", **fields: object) -> None:
    columns = {"pending_guidance": 0, "completion_signalled": 0, "validation_status": "",
               "validation_done_criteria": "", **fields}
    with write_transaction(conn):
        conn.execute("DELETE FROM forum_control_state WHERE run_id = ? AND agent_name = ?", (run_id, agent))
        conn.execute(
            f"INSERT INTO forum_control_state (run_id, agent_name, ticket, last_event_sequence, {', '.join(columns)})"
            f" VALUES (?, ?, 'T-1', 1, {', '.join('?' for _ in columns)})",
            (run_id, agent, *columns.values()),
        )


@pytest.fixture
def conn(tmp_path: Path):
    db = Database(tmp_path / "gates.db")
    db.migrate()
    connection = db.connect()
    try:
        yield connection
    finally:
        connection.close()


def clean(workspace: str, repo: str) -> list[str]:
    return []


def test_missing_brief(conn: sqlite3.Connection) -> None:
    run_id, _ = _insert(conn, brief={})
    assert close_blockers(conn, run_id, clean)[0] == f"bootstrap run {run_id} is missing run brief; close blocked"


def test_empty_done_criteria(conn: sqlite3.Connection) -> None:
    run_id, _ = _insert(conn, brief={"done_criteria": "   "})
    assert close_blockers(conn, run_id, clean)[0] == f"bootstrap run {run_id} has empty done criteria; close blocked"


def test_pending_guidance_is_counted(conn: sqlite3.Connection) -> None:
    run_id, ws = _insert(conn, agents=("agent", "helper"))
    _signal(conn, run_id, "agent", pending_guidance=1, pending_question="a?")
    _signal(conn, run_id, "helper", pending_guidance=1, pending_question="b?")
    assert close_blockers(conn, run_id, clean) == [
        f"bootstrap run {run_id} has 2 pending forum guidance request(s); close blocked",
        f"agent agent@{ws} missing forum completion signal; close blocked",
        f"agent helper@{ws} missing forum completion signal; close blocked",
    ]


def test_missing_completion(conn: sqlite3.Connection) -> None:
    run_id, ws = _insert(conn)
    assert close_blockers(conn, run_id, clean) == [f"agent agent@{ws} missing forum completion signal; close blocked"]
    _signal(conn, run_id, validation_status="passed", validation_done_criteria=DONE)  # validation alone: not enough
    assert close_blockers(conn, run_id, clean) == [f"agent agent@{ws} missing forum completion signal; close blocked"]


@pytest.mark.parametrize("status", ["failed", ""])
def test_validation_not_passed(conn: sqlite3.Connection, status: str) -> None:
    run_id, ws = _insert(conn)
    _signal(conn, run_id, completion_signalled=1, validation_status=status, validation_done_criteria=DONE)
    assert close_blockers(conn, run_id, clean) == [f'agent agent@{ws} forum validation status="{status}"; close blocked']


def test_done_criteria_must_match_the_brief_trimmed(conn: sqlite3.Connection) -> None:
    run_id, ws = _insert(conn)
    _signal(conn, run_id, completion_signalled=1, validation_status="passed", validation_done_criteria="tests passed")
    assert close_blockers(conn, run_id, clean) == [f"agent agent@{ws} forum validation done_criteria mismatch; close blocked"]
    _signal(conn, run_id, completion_signalled=1, validation_status="passed", validation_done_criteria="Tests pass")
    assert close_blockers(conn, run_id, clean) == [f"agent agent@{ws} forum validation done_criteria mismatch; close blocked"]
    _signal(conn, run_id, completion_signalled=1, validation_status="passed", validation_done_criteria=f"  {DONE}\n")
    assert close_blockers(conn, run_id, clean) == []


@pytest.mark.parametrize("mode", ["bootstrap", "run"])
def test_uncommitted_changes_block_every_run(conn: sqlite3.Connection, mode: str) -> None:
    run_id, ws = _insert(conn, mode=mode)
    if mode == "bootstrap":
        _signal(conn, run_id, completion_signalled=1, validation_status="passed", validation_done_criteria=DONE)
    dirty = {(ws, "app"): ["notes.txt"]}
    assert close_blockers(conn, run_id, lambda w, r: dirty.get((w, r), [])) == [
        f"workspace {ws} repo app has uncommitted changes; close blocked"]
    assert close_blockers(conn, run_id, clean) == []


def test_plain_runs_have_no_bootstrap_gates(conn: sqlite3.Connection) -> None:
    run_id, _ = _insert(conn, mode="run")
    _signal(conn, run_id, pending_guidance=1)
    assert close_blockers(conn, run_id, clean) == []


# -- the same messages from `metawsm close` against a live daemon ---------------------------------


def _close(env: RunsEnv, run_id: str) -> tuple[int, str, str]:
    result = env.cli("close", "--run-id", run_id)
    return result.returncode, result.stdout, result.stderr


def _blocked(env: RunsEnv, run_id: str, message: str) -> None:
    """Exit 1, nothing on stdout, exactly one line on stderr: ``error: <gate message>``."""
    assert _close(env, run_id) == (1, "", f"error: {message}\n")
    assert env.snapshot(run_id)["status"] != "closed"


def test_close_gates_through_the_cli(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    started = env.cli("bootstrap", "--ticket", "T-1", "--repos", env.repo_name, *BRIEF_FLAGS, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["run"]
    run_id, ws, path = run["run_id"], run["agents"][0]["workspace"], Path(run["agents"][0]["workspace_path"])
    env.wait_agent(run_id, lambda a: a.get("last_activity_at"), "running")
    label = f"agent agent@{ws}"

    def signal(*args: str, status: str | None = None) -> None:
        result = env.cli("forum", "signal", "--run-id", run_id, "--ticket", "T-1", "--agent-name", "agent", *args)
        assert result.returncode == 0, result.stderr
        if status:
            env.wait_status(run_id, status)

    _blocked(env, run_id, f"{label} missing forum completion signal; close blocked")
    signal("--type", "guidance_request", "--question", "Need decision", status="awaiting_guidance")
    _blocked(env, run_id, f"bootstrap run {run_id} has 1 pending forum guidance request(s); close blocked")
    signal("--type", "guidance_answer", "--answer", "Proceed", status="running")
    signal("--type", "completion", "--summary", "done")
    env.wait_agent(run_id, lambda a: a.get("completion_signalled"), "completion projected")
    _blocked(env, run_id, f'{label} forum validation status=""; close blocked')
    signal("--type", "validation", "--status", "failed", "--done-criteria", DONE)
    env.wait_agent(run_id, lambda a: a.get("validation_status") == "failed", "validation projected")
    _blocked(env, run_id, f'{label} forum validation status="failed"; close blocked')
    signal("--type", "validation", "--status", "passed", "--done-criteria", "tests passed", status="completed")
    _blocked(env, run_id, f"{label} forum validation done_criteria mismatch; close blocked")
    signal("--type", "validation", "--status", "passed", "--done-criteria", f" {DONE} ")
    env.wait_agent(run_id, lambda a: a.get("validation_done_criteria") == DONE, "validation projected")
    (path / "scratch.txt").write_text("not committed\n")
    _blocked(env, run_id, f"workspace {ws} repo {env.repo_name} has uncommitted changes; close blocked")
    git(path, "add", "scratch.txt")  # staged is still uncommitted
    _blocked(env, run_id, f"workspace {ws} repo {env.repo_name} has uncommitted changes; close blocked")
    git(path, "commit", "-q", "-m", "scratch")
    assert _close(env, run_id)[0] == 0
    assert env.snapshot(run_id)["status"] == "closed"

    # The two gates no API request can reach: runs stored without a brief / with empty criteria.
    conn = Database(env.serve.db_path).connect()
    try:
        no_brief, _ = _insert(conn, brief={}, policy=env.policy, base_dir=env.daemon_dir, status="stopped")
        empty, _ = _insert(conn, brief={"done_criteria": ""}, policy=env.policy, base_dir=env.daemon_dir,
                           status="stopped")
    finally:
        conn.close()
    _blocked(env, no_brief, f"bootstrap run {no_brief} is missing run brief; close blocked")
    _blocked(env, empty, f"bootstrap run {empty} has empty done criteria; close blocked")
    assert env.sessions() == []  # stored runs with stopped agents: nothing was started for them
