"""Cleanup: remove a run's tmux sessions and (unless kept) its workspaces."""

from __future__ import annotations

import logging
from typing import Any

from metawsm.runs import store
from metawsm.runs.tmux import Tmux
from metawsm.runs.wiring import workspace_provider_for

log = logging.getLogger("metawsm.runs")


def cleanup_run(
    conn: Any, run: store.RunRow, *, services: Any, keep_workspaces: bool, dry_run: bool = False
) -> dict[str, Any]:
    spec = run.spec
    tmux = Tmux(spec.tmux_socket)
    agents = store.agents(conn, run.run_id)
    sessions = sorted({a.session_name for a in agents if a.session_name})
    workspaces = sorted({a.workspace for a in agents})
    summary: dict[str, Any] = {
        "run_id": run.run_id,
        "sessions": sessions,
        "workspaces": [] if keep_workspaces else workspaces,
        "kept_workspaces": keep_workspaces,
        "dry_run": dry_run,
    }
    if dry_run:
        return summary
    for session in sessions:
        tmux.kill_session(session)
    if not keep_workspaces:
        provider = workspace_provider_for(spec, spec.policy_or(services.policy))
        for workspace in workspaces:
            provider.delete(workspace, spec.repos)
    for agent in agents:
        store.update_agent(conn, run.run_id, agent.agent_name, agent.workspace, status="cleaned", health="",
                           pane_pid=None)
    if services.tokens is not None:
        services.tokens.revoke_run(run.run_id)  # its agents are gone: so are their tokens
    store.record_event(conn, run.run_id, "cleanup", run.status, run.status,
                       f"removed {len(sessions)} session(s)"
                       + ("" if keep_workspaces else f" and {len(workspaces)} workspace(s)"))
    log.info("run %s cleaned up (%d sessions, workspaces %s)", run.run_id, len(sessions),
             "kept" if keep_workspaces else "removed")
    return summary
