"""Building RunSnapshots from SQLite: reading status never asks an actor or changes state."""

from __future__ import annotations

import shlex
import sqlite3
from datetime import UTC, datetime

from metawsm.clock import parse_time
from metawsm.runs import store
from metawsm.runs.attach import ATTACHABLE_STATUSES, attach_command
from metawsm.runs.model import AgentView, ForumCounts, PendingGuidance, RunSnapshot, StepView
from metawsm.runs.planner import Plan, workspace_name


class AgentStatus(AgentView, kw_only=True, omit_defaults=True):
    """An agent as the API shows it: AgentView plus where an operator finds its session."""

    ticket: str = ""  # the ticket of its workspace (a run with several tickets has one per ticket)
    attach_command: str = ""  # the tmux command that attaches to its session, while it has one


class ControlRow:
    __slots__ = ("agent_name", "ticket", "thread_id", "pending", "question", "context", "completed", "summary",
                 "validation_status", "done_criteria")

    def __init__(self, row: sqlite3.Row | tuple) -> None:
        (self.agent_name, self.ticket, self.thread_id, pending, self.question, self.context, completed,
         self.summary, self.validation_status, self.done_criteria) = tuple(row)
        self.pending = bool(pending)
        self.completed = bool(completed)


def control_rows(conn: sqlite3.Connection, run_id: str) -> dict[str, ControlRow]:
    rows = conn.execute(
        "SELECT agent_name, ticket, thread_id, pending_guidance, pending_question, pending_context,"
        " completion_signalled, completion_summary, validation_status, validation_done_criteria"
        " FROM forum_control_state WHERE run_id = ?",
        (run_id,),
    ).fetchall()
    return {r[0]: ControlRow(r) for r in rows}


def answer_command(run_id: str, ticket: str, agent: str) -> str:
    return (
        f"metawsm forum signal --run-id {shlex.quote(run_id)} --ticket {shlex.quote(ticket)} "
        f'--agent-name {shlex.quote(agent)} --type guidance_answer --answer "<your answer>"'
    )


def _age(at: str | None) -> float | None:
    if not at:
        return None
    try:
        return round((datetime.now(UTC) - parse_time(at)).total_seconds(), 1)
    except ValueError:
        return None


def _attach_command(row: store.AgentRow) -> str:
    """The attach command while the agent's session should exist, else ""."""
    has_session = row.status in ATTACHABLE_STATUSES or row.health == "stopped"  # a clean exit keeps its pane
    if not (row.session_name and row.tmux_socket and has_session):
        return ""
    return attach_command(row.tmux_socket, row.session_name)


def build_snapshot(conn: sqlite3.Connection, run_id: str, restart_budget: int) -> RunSnapshot:
    run = store.load_run(conn, run_id)
    spec = run.spec
    controls = control_rows(conn, run_id)
    tickets = {workspace_name(ticket, run_id): ticket for ticket in spec.tickets}
    agents: list[AgentView] = []
    for row in store.agents(conn, run_id):
        control = controls.get(row.agent_name)
        agents.append(
            AgentStatus(
                name=row.agent_name,
                workspace=row.workspace,
                session=row.session_name,
                socket=row.tmux_socket,
                workspace_path=row.workspace_path,
                status=row.status,
                health=row.health,
                pane_pid=row.pane_pid,
                last_activity_at=row.last_activity_at,
                last_activity_age_seconds=_age(row.last_activity_at),
                restarts_used=row.restarts_used,
                restarts_left=max(0, restart_budget - row.restarts_used),
                last_error=row.last_error,
                completion_signalled=bool(control and control.completed),
                completion_summary=control.summary if control else "",
                validation_status=control.validation_status if control else "",
                validation_done_criteria=control.done_criteria if control else "",
                ticket=tickets.get(row.workspace, ""),
                attach_command=_attach_command(row),
            )
        )
    pending = [
        PendingGuidance(
            agent_name=c.agent_name,
            question=c.question or "",
            context=c.context or "",
            thread_id=c.thread_id or "",
            answer_command=answer_command(run_id, c.ticket or spec.tickets[0], c.agent_name),
        )
        for c in controls.values()
        if c.pending
    ]
    counts = conn.execute(
        "SELECT COUNT(*), SUM(v.state != 'closed'), SUM(q.needs_answer = 1 AND v.state != 'closed')"
        " FROM forum_thread_views v LEFT JOIN forum_thread_queue_view q ON q.thread_id = v.thread_id"
        " WHERE v.run_id = ?",
        (run_id,),
    ).fetchone()
    return RunSnapshot(
        run_id=run.run_id,
        mode=run.mode,
        status=run.status,
        tickets=spec.tickets,
        repos=spec.repos,
        created_at=run.created_at,
        updated_at=run.updated_at,
        error=run.error,
        agents=agents,
        steps=[StepView(ordinal=s.ordinal, ticket=s.ticket, name=s.name, status=s.status, attempts=s.attempts,
                        error=s.error, started_at=s.started_at, finished_at=s.finished_at)
               for s in store.steps(conn, run_id)],
        pending_guidance=pending,
        forum=ForumCounts(threads=counts[0] or 0, open_threads=counts[1] or 0, unanswered=counts[2] or 0),
        brief=store.brief(conn, run_id),
        workspace_root=spec.workspace_root,
    )


def plan_snapshot(plan: Plan) -> RunSnapshot:
    """What a dry run prints: the steps and agents it would create, nothing stored."""
    spec = plan.spec
    tickets = {workspace_name(ticket, spec.run_id): ticket for ticket in spec.tickets}
    return RunSnapshot(
        run_id=spec.run_id,
        mode=spec.mode,
        status="planned",
        tickets=spec.tickets,
        repos=spec.repos,
        created_at=spec.created_at,
        updated_at=spec.created_at,
        dry_run=True,
        agents=[AgentStatus(name=s.agent, workspace=s.workspace, session=s.session, socket=spec.tmux_socket,
                            workspace_path=s.workspace_path, status="planned", restarts_used=0,
                            completion_signalled=False, ticket=tickets.get(s.workspace, ""))
                for s in plan.slots],
        pending_guidance=[],
        steps=[StepView(ordinal=i, ticket=t, name=n, status="planned") for i, (t, n) in enumerate(plan.steps, 1)],
        brief=plan.brief,
        workspace_root=spec.workspace_root,
    )
