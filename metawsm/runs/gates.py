"""Close gates: what must hold before a run may be closed (messages are a contract)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from metawsm.runs import store
from metawsm.runs.snapshot import control_rows


def close_blockers(
    conn: sqlite3.Connection,
    run_id: str,
    dirty_files: Callable[[str, str], list[str]],
) -> list[str]:
    """Every reason the run cannot close, in the order they are reported (first one wins).

    ``dirty_files(workspace, repo)`` lists uncommitted changes of one repo's worktree.
    """
    run = store.load_run(conn, run_id)
    spec = run.spec
    blockers: list[str] = []
    agents = store.agents(conn, run_id)
    if run.mode == "bootstrap":
        brief = store.brief(conn, run_id)
        controls = control_rows(conn, run_id)
        if brief is None:
            blockers.append(f"bootstrap run {run_id} is missing run brief; close blocked")
        elif not brief.done_criteria.strip():
            blockers.append(f"bootstrap run {run_id} has empty done criteria; close blocked")
        pending = sum(1 for c in controls.values() if c.pending)
        if pending:
            blockers.append(f"bootstrap run {run_id} has {pending} pending forum guidance request(s); close blocked")
        expected = brief.done_criteria.strip() if brief is not None else ""
        for agent in agents:
            label = f"agent {agent.agent_name}@{agent.workspace}"
            control = controls.get(agent.agent_name)
            if control is None or not control.completed:
                blockers.append(f"{label} missing forum completion signal; close blocked")
                continue
            status = control.validation_status or ""
            if status != "passed":
                blockers.append(f'{label} forum validation status="{status}"; close blocked')
                continue
            if (control.done_criteria or "").strip() != expected:
                blockers.append(f"{label} forum validation done_criteria mismatch; close blocked")
    for workspace in sorted({a.workspace for a in agents}):
        for repo in spec.repos:
            if dirty_files(workspace, repo):
                blockers.append(f"workspace {workspace} repo {repo} has uncommitted changes; close blocked")
    return blockers
