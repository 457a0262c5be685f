"""Building RunSnapshots from SQLite: reading status never asks an actor or changes state."""

from __future__ import annotations

import shlex
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from metawsm.clock import parse_time
from metawsm.runs import store
from metawsm.runs.attach import ATTACHABLE_STATUSES, attach_command
from metawsm.runs.model import (
    AgentView,
    DocsView,
    DocSyncRow,
    ForumCounts,
    PendingGuidance,
    PullRequestRow,
    RepoDiff,
    ReviewCounts,
    RunSnapshot,
    StepView,
)
from metawsm.runs.planner import Plan, workspace_name
from metawsm.runs.providers.workspace import WorkspaceError, dirty_paths, run_git


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
    """Each agent's control state.  After an iteration (``metawsm iterate``) only the completion
    and validation signals that came after its feedback count."""
    rows = conn.execute(
        "SELECT agent_name, ticket, thread_id, pending_guidance, pending_question, pending_context,"
        " completion_signalled, completion_summary, validation_status, validation_done_criteria"
        " FROM forum_control_state WHERE run_id = ?",
        (run_id,),
    ).fetchall()
    controls = {r[0]: ControlRow(r) for r in rows}
    marks = store.iteration_marks(conn, run_id)
    if marks:
        for name, control in controls.items():
            mark = max(marks.get("", 0), marks.get(name, 0))
            if mark or name in marks or "" in marks:
                _signals_since(conn, run_id, control, mark)
    return controls


def guidance_qa(conn: sqlite3.Connection, run_id: str) -> list[tuple[str, str]]:
    """The run's guidance questions and their answers, in order, from its control signals."""
    rows = conn.execute("SELECT payload_json, agent_name FROM forum_events WHERE run_id = ?"
                        " AND event_type = 'forum.control.signal' ORDER BY sequence", (run_id,)).fetchall()
    pairs: list[list[str]] = []
    open_by_agent: dict[str, list[str]] = {}
    for raw, envelope_agent in rows:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(body, dict) or not isinstance(body.get("payload"), dict):
            continue
        fields = body["payload"]
        agent = str(fields.get("agent_name") or envelope_agent or "")
        kind = body.get("control_type")
        if kind == "guidance_request":
            pair = [str(fields.get("question") or ""), ""]
            pairs.append(pair)
            open_by_agent[agent] = pair
        elif kind == "guidance_answer" and agent in open_by_agent:
            open_by_agent.pop(agent)[1] = str(fields.get("answer") or "")
    return [(q, a) for q, a in pairs]


def _signals_since(conn: sqlite3.Connection, run_id: str, control: ControlRow, sequence: int) -> None:
    """Completion and validation of ``control`` as only the signals after ``sequence`` say."""
    control.completed, control.summary, control.validation_status, control.done_criteria = False, "", "", ""
    rows = conn.execute(
        "SELECT payload_json, agent_name FROM forum_events WHERE run_id = ? AND sequence > ?"
        " AND event_type = 'forum.control.signal' ORDER BY sequence", (run_id, sequence)).fetchall()
    for raw, envelope_agent in rows:
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            continue
        if not isinstance(body, dict):
            continue
        fields = body.get("payload") or {}
        if not isinstance(fields, dict) or (fields.get("agent_name") or envelope_agent) != control.agent_name:
            continue
        kind = body.get("control_type") or fields.get("control_type")
        if kind == "completion":
            control.completed, control.summary = True, str(fields.get("summary") or "")
        elif kind == "validation":
            control.validation_status = str(fields.get("status") or "")
            control.done_criteria = str(fields.get("done_criteria") or "")


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


def build_snapshot(conn: sqlite3.Connection, run_id: str, restart_budget: int, details: bool = False) -> RunSnapshot:
    """The run as SQLite has it; ``details`` adds what git says (diffs) and the next command."""
    snapshot = _build_snapshot(conn, run_id, restart_budget)
    if not details:
        return snapshot
    diffs = _diffs(conn, run_id)
    return msgspec.structs.replace(snapshot, diffs=diffs, next=next_command(snapshot, diffs))


def _build_snapshot(conn: sqlite3.Connection, run_id: str, restart_budget: int) -> RunSnapshot:
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
        pull_requests=[PullRequestRow(**row) for row in store.pull_requests(conn, run_id)],
        review=_review_counts(conn, run_id),
        docs=DocsView(provider=spec.docs_provider, home_repo=spec.doc_home_repo, seed_mode=spec.doc_seed_mode,
                      sync=[DocSyncRow(**row) for row in store.doc_sync_states(conn, run_id)]),
    )


def _review_counts(conn: sqlite3.Connection, run_id: str) -> ReviewCounts | None:
    counts = store.review_counts(conn, run_id)
    if not counts:
        return None
    return ReviewCounts(queued=counts.get("queued", 0), dispatched=counts.get("dispatched", 0))


def _diffs(conn: sqlite3.Connection, run_id: str) -> list[RepoDiff]:
    """Per workspace and repo: uncommitted paths and commits ahead of the base (read-only git)."""
    run = store.load_run(conn, run_id)
    spec = run.spec
    prefix = (spec.policy.workspace.branch_prefix if spec.policy is not None else "task").strip("/")
    diffs: list[RepoDiff] = []
    for workspace in sorted({a.workspace for a in store.agents(conn, run_id)}):
        for repo in spec.repos:
            path = Path(spec.workspace_root) / workspace / repo
            base = RepoDiff(workspace=workspace, repo=repo, branch=f"{prefix}/{workspace}",
                            base_branch=spec.base_branch)
            if not path.is_dir():
                diffs.append(msgspec.structs.replace(base, error=f"{path} does not exist"))
                continue
            try:
                changed = dirty_paths(path)
            except WorkspaceError as error:
                diffs.append(msgspec.structs.replace(base, error=str(error)))
                continue
            ahead = run_git(["--no-optional-locks", "-C", str(path), "rev-list", "--count",
                             f"{spec.base_branch}..HEAD"], check=False).stdout.strip()
            diffs.append(msgspec.structs.replace(base, changed=len(changed), changed_files=changed[:20],
                                                 ahead=int(ahead) if ahead.isdigit() else 0))
    return diffs


def next_command(snapshot: RunSnapshot, diffs: list[RepoDiff]) -> str:
    """The one command that moves the run on from where it is ("" when it only has to wait)."""
    select = (f"--ticket {shlex.quote(snapshot.tickets[0])}" if len(snapshot.tickets) == 1
              else f"--run-id {shlex.quote(snapshot.run_id)}")
    status = snapshot.status
    if status == "awaiting_guidance" and snapshot.pending_guidance:
        return snapshot.pending_guidance[0].answer_command
    if status in ("stopped", "paused", "failed"):
        return f"metawsm resume {select}"
    if status == "stopping":
        return f"metawsm stop {select}"
    if status == "closing":
        return f"metawsm close {select}"
    if status == "closed":
        gone = all(a.status == "cleaned" for a in snapshot.agents)
        return "" if gone else f"metawsm cleanup {select}"
    if status != "completed":
        return ""
    if snapshot.review is not None and snapshot.review.queued:
        return f"metawsm review sync {select} --dispatch"
    if any(d.changed for d in diffs):
        return f"metawsm commit {select}"
    if any(d.ahead for d in diffs):
        if not snapshot.pull_requests:
            return f"metawsm pr {select}"
        return f"metawsm merge {select}"
    return f"metawsm close {select}"


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
