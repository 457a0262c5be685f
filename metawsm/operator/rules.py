"""The operator's rules: what SQLite says each active run needs (docs/operator.md#rules).

Pure reads over the store, no actor state: the ``Operator`` actor calls them when something
happened (a control signal, a run transition, an agent's report) and when its one deadline timer
fires, and claims what they find as decisions.  Each finding carries its ``cause`` (what it
answers), so a finding that was already decided is recognised by ``operator_decisions``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import msgspec

from metawsm.clock import parse_time
from metawsm.operator.model import (
    AUTO_RESTART,
    AUTO_STOP_STALE,
    COMMIT_READY,
    ESCALATE_BLOCKED,
    ESCALATE_GUIDANCE,
    GUIDANCE_NEEDED,
    PR_READY,
    REVIEW_FEEDBACK_READY,
    Decision,
)
from metawsm.policy import Policy
from metawsm.runs import store

# Runs the operator watches: everything that may still need a human or an action.
WATCHED_STATUSES = ("running", "awaiting_guidance", "completed", "failed", "stopped")
_tickets = msgspec.json.Decoder(list[str])


class PendingGuidance(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    run_status: str
    tickets: list[str]
    agent_name: str
    ticket: str
    thread_id: str
    event_id: str
    question: str
    asked_at: str


class RunActivity(msgspec.Struct, frozen=True, kw_only=True):
    """When a running run last showed a sign of life, and since when it counts as stale."""

    run_id: str
    tickets: list[str]
    last_activity_at: str
    stale_after_seconds: float

    def stale_at(self) -> datetime:
        return parse_time(self.last_activity_at) + timedelta(seconds=self.stale_after_seconds)


def run_tickets(conn: sqlite3.Connection, run_id: str) -> tuple[str, list[str]]:
    row = conn.execute("SELECT status, tickets_json FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        return "", []
    return row[0], _tickets.decode(row[1] or "[]")


def pending_guidance(conn: sqlite3.Connection, run_ids: Iterable[str] | None = None) -> list[PendingGuidance]:
    """Every pending guidance request of a run that is not closed (of ``run_ids`` when given)."""
    sql = ("SELECT c.run_id, r.status, r.tickets_json, c.agent_name, c.ticket, c.thread_id, c.pending_event_id,"
           " c.pending_question, e.occurred_at FROM forum_control_state c"
           " JOIN forum_events e ON e.event_id = c.pending_event_id JOIN runs r ON r.run_id = c.run_id"
           " WHERE c.pending_guidance = 1 AND c.pending_event_id != '' AND r.status != 'closed'")
    args: list[Any] = []
    if run_ids is not None:
        wanted = sorted(set(run_ids))
        if not wanted:
            return []
        sql += f" AND c.run_id IN ({', '.join('?' for _ in wanted)})"
        args.extend(wanted)
    return [PendingGuidance(run_id=r[0], run_status=r[1], tickets=_tickets.decode(r[2] or "[]"), agent_name=r[3],
                            ticket=r[4], thread_id=r[5], event_id=r[6], question=r[7] or "", asked_at=r[8])
            for r in conn.execute(sql + " ORDER BY e.occurred_at", args).fetchall()]


def guidance_needed(pending: PendingGuidance) -> Decision:
    question = pending.question.strip().splitlines()[0] if pending.question.strip() else "(no question text)"
    return Decision(run_id=pending.run_id, intent=GUIDANCE_NEEDED, cause=pending.event_id,
                    reason=f"{pending.agent_name} ({pending.ticket}) asks: {question[:200]}",
                    thread_id=pending.thread_id, ticket=pending.ticket, agent_name=pending.agent_name,
                    run_status=pending.run_status, tickets=pending.tickets)


def escalate_guidance(pending: PendingGuidance, now: datetime, sla_minutes: float) -> Decision:
    waited = (now - parse_time(pending.asked_at)).total_seconds() / 60
    reason = (f"guidance request from {pending.agent_name} ({pending.ticket}) unanswered for {waited:.1f} min"
              f" (forum.sla.escalation_minutes = {sla_minutes:g})")
    return Decision(run_id=pending.run_id, intent=ESCALATE_GUIDANCE, cause=pending.event_id, reason=reason,
                    thread_id=pending.thread_id, ticket=pending.ticket, agent_name=pending.agent_name,
                    run_status=pending.run_status, tickets=pending.tickets)


def decided(conn: sqlite3.Connection, run_id: str, intent: str, cause: str) -> bool:
    return conn.execute("SELECT 1 FROM operator_decisions WHERE run_id = ? AND intent = ? AND cause = ?",
                        (run_id, intent, cause)).fetchone() is not None


def _newest(*times: str | None) -> str:
    present = [t for t in times if t]
    return max(present, key=lambda t: parse_time(t)) if present else ""


def running_activity(conn: sqlite3.Connection, policy_of: Any) -> list[RunActivity]:
    """For each ``running`` run, its newest sign of life.

    Real activity only: an agent's pane output or log write, its progress (workspace changes,
    control signals), any forum event of the run, and the moment the run last became
    ``running`` (so a resumed run starts a fresh window).  ``runs.updated_at`` is not used: it
    moves on any transition, which is what made the Go version stop runs that were busy.
    """
    found = []
    for run_id, tickets_json in conn.execute("SELECT run_id, tickets_json FROM runs WHERE status = 'running'"):
        agent_times = conn.execute(
            "SELECT MAX(last_activity_at), MAX(last_progress_at) FROM run_agents WHERE run_id = ?", (run_id,)
        ).fetchone()
        forum = conn.execute("SELECT occurred_at FROM forum_events WHERE run_id = ? ORDER BY sequence DESC LIMIT 1",
                             (run_id,)).fetchone()
        became_running = conn.execute(
            "SELECT at FROM events WHERE run_id = ? AND kind = 'transition' AND to_status = 'running'"
            " ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()
        last = _newest(agent_times[0], agent_times[1], forum[0] if forum else None,
                       became_running[0] if became_running else None)
        if not last:
            continue
        policy: Policy = policy_of(run_id)
        found.append(RunActivity(run_id=run_id, tickets=_tickets.decode(tickets_json or "[]"), last_activity_at=last,
                                 stale_after_seconds=float(policy.operator.stale_run_age_seconds)))
    return found


def auto_stop_stale(activity: RunActivity, now: datetime) -> Decision:
    idle = (now - parse_time(activity.last_activity_at)).total_seconds()
    return Decision(run_id=activity.run_id, intent=AUTO_STOP_STALE, cause=f"stale-since:{activity.last_activity_at}",
                    reason=(f"no activity or progress for {idle:.0f}s (since {activity.last_activity_at};"
                            f" operator.stale_run_age_seconds = {activity.stale_after_seconds:g})"),
                    run_status="running", tickets=activity.tickets)


class DeliveryState(msgspec.Struct, frozen=True, kw_only=True):
    dirty: list[str]  # "<workspace>/<repo>: <n> file(s)"
    ahead: list[str]  # "<workspace>/<repo>" with commits the base branch lacks
    pull_requests: int
    queued_reviews: int


def delivery_decision(run_id: str, run_status: str, tickets: list[str], cause: str, mode: str,
                      state: DeliveryState) -> Decision | None:
    """commit_ready, then pr_ready, then review_feedback_ready, for a completed run (``git_pr.mode`` not off)."""
    if mode == "off" or run_status != "completed":
        return None
    if state.dirty:
        intent, reason = COMMIT_READY, "uncommitted changes in " + ", ".join(state.dirty)
    elif state.ahead and state.pull_requests == 0:
        intent, reason = PR_READY, "committed work without a pull request in " + ", ".join(state.ahead)
    elif state.queued_reviews:
        intent, reason = REVIEW_FEEDBACK_READY, f"{state.queued_reviews} review item(s) queued for the agents"
    else:
        return None
    return Decision(run_id=run_id, intent=intent, reason=reason, cause=cause, run_status=run_status, tickets=tickets)


def llm_context(conn: sqlite3.Connection, decision: Decision) -> dict[str, Any]:
    """What the optional LLM gets on stdin about the run of ``decision`` (docs/operator.md#llm-assist)."""
    status, tickets = run_tickets(conn, decision.run_id)
    agents = [{"name": a.agent_name, "workspace": a.workspace, "status": a.status, "health": a.health,
               "restarts_used": a.restarts_used, "last_activity_at": a.last_activity_at, "last_error": a.last_error}
              for a in store.agents(conn, decision.run_id)]
    pending = [{"agent_name": p.agent_name, "ticket": p.ticket, "question": p.question, "asked_at": p.asked_at}
               for p in pending_guidance(conn, [decision.run_id])]
    last = _newest(*(a.last_activity_at for a in store.agents(conn, decision.run_id)))
    return {"run_id": decision.run_id, "run_status": status, "tickets": tickets, "rule_intent": decision.intent,
            "rule_reason": decision.reason, "pending_guidance": pending, "agents": agents,
            "last_activity_at": last or None}


def auto_restart(conn: sqlite3.Connection, run_id: str, agent_name: str, workspace: str, health: str,
                 incarnation: str, restarts_left: int) -> Decision:
    """The agent actor's restart, as a decision: one per dead (or stalled) incarnation of the session."""
    status, tickets = run_tickets(conn, run_id)
    return Decision(run_id=run_id, intent=AUTO_RESTART, cause=f"{agent_name}@{workspace}:{health}:{incarnation}",
                    reason=(f"agent {agent_name}@{workspace} was {health} (confirmed); restarting only this agent"
                            f" ({restarts_left} restart(s) left after this one)"),
                    agent_name=agent_name, workspace=workspace, run_status=status, tickets=tickets,
                    ticket=tickets[0] if len(tickets) == 1 else "")


def escalate_blocked(conn: sqlite3.Connection, run_id: str, agent_name: str, workspace: str, health: str,
                     incarnation: str, why: str) -> Decision:
    status, tickets = run_tickets(conn, run_id)
    return Decision(run_id=run_id, intent=ESCALATE_BLOCKED, cause=f"{agent_name}@{workspace}:blocked:{incarnation}",
                    reason=f"agent {agent_name}@{workspace} is {health} and {why}; a human must look",
                    agent_name=agent_name, workspace=workspace, run_status=status, tickets=tickets,
                    ticket=tickets[0] if len(tickets) == 1 else "")
