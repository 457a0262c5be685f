"""The operator: supervision decisions taken inside the daemon, by rules (docs/operator.md).

Driven by what happens, plus one deadline timer:

* :class:`ControlNews` (from :class:`OperatorSink`, after the ``control_state`` projection applied
  control signals): a new guidance request is ``guidance_needed``;
* :class:`RunNews` (from each ``Run`` actor, on every status transition): a ``completed`` run is
  checked for ``commit_ready`` / ``pr_ready`` / ``review_feedback_ready``;
* :class:`AgentDecided` (from a ``TmuxAgent``, which owns the restart logic and claims
  ``auto_restart`` and ``escalate_blocked`` itself): announced and, for ``escalate_blocked``,
  escalated;
* the timer sleeps until the next deadline: a guidance request's SLA
  (``escalate_guidance``) or a running run's stale window (``auto_stop_stale``).  Every event
  that can bring a deadline closer re-arms it; activity only pushes deadlines later, so it needs
  no message: a deadline that fires early finds the newer activity and re-arms.

Each decision is claimed in ``operator_decisions`` before its action, keyed by its cause, so it
is taken once, across restarts too.  Its action (forum writes, a stop, a commit) is carried out
afterwards, and ``executed`` is set when the action succeeded.  An escalation whose forum
writes were not confirmed before the daemon stopped is carried out again at the next start.
Then the decision is announced (``services.decisions``: the WebSocket hub, the long-poll route)
and notified (``operator.notify_command``, ``operator.webhook_url``); with ``operator.llm.mode``
not ``off`` the LLM is consulted on a worker thread and its suggestion recorded beside it.
"""

from __future__ import annotations

import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from metawsm.actors.forum.messages import INTAKE, Accepted, Submit
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.actors.messages import Request
from metawsm.actors.operator.messages import AgentDecided, ControlNews, RunNews
from metawsm.actors.runs.messages import RUNS, CommitRun, OpenPullRequests, StopRun, SyncReviews
from metawsm.clock import now_text, parse_time, utc_now
from metawsm.forum.requests import AddPostRequest, SetPriorityRequest
from metawsm.operator import llm, rules
from metawsm.operator.model import (
    AUTO_STOP_STALE,
    COMMIT_READY,
    ESCALATE_BLOCKED,
    ESCALATE_GUIDANCE,
    PR_READY,
    REVIEW_FEEDBACK_READY,
    Decision,
    Suggestion,
)
from metawsm.operator.notify import Notifier
from metawsm.policy import Policy
from metawsm.runs import delivery, store
from metawsm.store import schema_operator
from metawsm.store.db import write_transaction

log = logging.getLogger("metawsm.operator")

ACTOR_NAME = "operator"
MIN_DEADLINE_SECONDS = 0.05  # never spin: a deadline in the past is checked this soon
MAX_DEADLINE_SECONDS = 3600.0  # a far deadline is re-checked hourly (a policy may have changed)


class _Deadline(msgspec.Struct, frozen=True):
    generation: int


class _Executed(msgspec.Struct, frozen=True):
    """A decision's action finished; ``error`` is "" when it succeeded."""

    decision_id: int
    error: str = ""


class _Suggested(msgspec.Struct, frozen=True):
    decision_id: int
    suggestion: Suggestion | None


# Tells only: ControlNews (OperatorSink), RunNews (Run actors), AgentDecided (TmuxAgent), and the
# operator's own _Deadline timer, _Executed action results and _Suggested LLM answers.
OperatorMessage = ControlNews | RunNews | AgentDecided | _Deadline | _Executed | _Suggested


class Operator(ManagedActor):
    kind: ClassVar[str] = "operator"

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx)
        self.conn: sqlite3.Connection | None = None
        self.decided = 0
        self.generation = 0
        self.next_deadline = ""
        self.pending: dict[int, Decision] = {}  # decisions whose action is under way
        self.notifier: Notifier | None = None
        self.notifier_settings: Any = None
        self.llm_pool: ThreadPoolExecutor | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self) -> None:
        services = self.system.services
        self.conn = services.db.connect()
        self._current_notifier()
        self._resume_unfinished()
        self._guidance_needed(None)
        self._arm()

    def teardown(self) -> None:
        self.generation += 1
        if self.llm_pool is not None:
            self.llm_pool.shutdown(wait=False, cancel_futures=True)
        if self.notifier is not None:
            self.notifier.close(timeout=2.0)
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def describe(self) -> dict[str, Any]:
        return {"decided": self.decided, "next_deadline": self.next_deadline, "actions_pending": len(self.pending)}

    def handle(self, message: Any) -> Any:
        match message:
            case ControlNews(run_ids=run_ids):
                self._guidance_needed(run_ids)
                self._arm()
            case RunNews(run_id=run_id, status=status):
                if status == "completed":
                    self._delivery(run_id)
                self._arm()
            case AgentDecided(decision_id=decision_id):
                self._agent_decided(decision_id)
            case _Deadline(generation=generation):
                if generation == self.generation:
                    self._deadlines()
            case _Executed(decision_id=decision_id, error=error):
                self._executed(decision_id, error)
            case _Suggested(decision_id=decision_id, suggestion=suggestion):
                self._suggested(decision_id, suggestion)
            case _:
                return super().handle(message)
        return None

    # -- rules ----------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        assert self.conn is not None, "the operator is not started"
        return self.conn

    def _sla_minutes(self) -> float:
        return float(self.system.services.policy.forum.sla.escalation_minutes)

    def _policy_of(self, run_id: str) -> Policy:
        daemon_policy: Policy = self.system.services.policy
        try:
            return store.load_run(self._db, run_id).spec.policy_or(daemon_policy)
        except store.RunNotFound:
            return daemon_policy

    def _guidance_needed(self, run_ids: list[str] | None) -> None:
        for pending in rules.pending_guidance(self._db, run_ids):
            self._decide(rules.guidance_needed(pending))

    def _deadlines(self) -> None:
        now = utc_now()
        sla = self._sla_minutes()
        for pending in rules.pending_guidance(self._db):
            if (now - parse_time(pending.asked_at)).total_seconds() >= sla * 60:
                self._decide(rules.escalate_guidance(pending, now, sla), self._escalate)
        for activity in rules.running_activity(self._db, self._policy_of):
            if activity.stale_at() <= now:
                self._decide(rules.auto_stop_stale(activity, now), self._stop_stale_run)
        self._arm()

    def _arm(self) -> None:
        """Sleep until the next deadline: the oldest unescalated guidance request or the first stale window."""
        conn, now = self._db, utc_now()
        due: list[float] = []
        sla_seconds = self._sla_minutes() * 60
        for pending in rules.pending_guidance(conn):
            if not rules.decided(conn, pending.run_id, ESCALATE_GUIDANCE, pending.event_id):
                due.append((parse_time(pending.asked_at) - now).total_seconds() + sla_seconds)
        for activity in rules.running_activity(conn, self._policy_of):
            cause = rules.auto_stop_stale(activity, now).cause
            if not rules.decided(conn, activity.run_id, AUTO_STOP_STALE, cause):
                due.append((activity.stale_at() - now).total_seconds())
        self.generation += 1
        delay = min(due, default=MAX_DEADLINE_SECONDS)
        delay = min(max(delay, MIN_DEADLINE_SECONDS), MAX_DEADLINE_SECONDS)
        self.next_deadline = f"in {delay:.2f}s" if due else ""
        self.tell_self_later(delay, _Deadline(self.generation))

    @staticmethod
    def _tell(ref: Any, message: Any) -> None:
        try:
            ref.tell(message)
        except Exception:  # noqa: BLE001 - the incarnation that armed the timer is gone
            pass

    def _delivery(self, run_id: str) -> None:
        status, tickets = rules.run_tickets(self._db, run_id)
        policy = self._policy_of(run_id)
        mode = policy.git_pr.mode.strip().lower()
        if status != "completed" or mode == "off":
            return
        row = self._db.execute("SELECT id FROM events WHERE run_id = ? AND to_status = 'completed'"
                               " ORDER BY id DESC LIMIT 1", (run_id,)).fetchone()
        cause = f"completed#{row[0] if row else 0}"
        try:
            state = self._delivery_state(run_id, policy)
        except Exception as error:  # noqa: BLE001 - git trouble: no delivery decision, say why once
            log.warning("operator: run %s: cannot read its workspaces: %s", run_id, error)
            return
        decision = rules.delivery_decision(run_id, status, tickets, cause, mode, state)
        if decision is None:
            return
        if decision.intent == REVIEW_FEEDBACK_READY:
            decision.cause = f"reviews#{state.queued_reviews}@{cause}"
        action = {COMMIT_READY: CommitRun(run_id), PR_READY: OpenPullRequests(run_id),
                  REVIEW_FEEDBACK_READY: SyncReviews(run_id, dispatch=True)}[decision.intent]
        self._decide(decision, (lambda d: self._ask_runs(d, action)) if mode == "auto" else None)

    def _delivery_state(self, run_id: str, policy: Policy) -> rules.DeliveryState:
        from metawsm.runs.wiring import workspace_provider_for

        spec = store.load_run(self._db, run_id).spec
        provider = workspace_provider_for(spec, policy)
        dirty, ahead = [], []
        for workspace in sorted({a.workspace for a in store.agents(self._db, run_id)}):
            for repo in spec.repos:
                path = Path(spec.workspace_root) / workspace / repo
                if not path.exists():
                    continue
                files = provider.dirty_files(workspace, repo)
                if files:
                    dirty.append(f"{workspace}/{repo}: {len(files)} file(s)")
                elif delivery.commits_ahead(path, spec.base_branch):
                    ahead.append(f"{workspace}/{repo}")
        return rules.DeliveryState(dirty=dirty, ahead=ahead, pull_requests=len(store.pull_requests(self._db, run_id)),
                                   queued_reviews=len(store.queued_reviews(self._db, run_id)))

    # -- deciding -------------------------------------------------------------------------

    def _decide(self, decision: Decision, action: Any = None) -> None:
        """Claim ``decision`` (once per cause); then carry out ``action(decision)`` or announce it now."""
        decision.at = decision.at or now_text()
        decision.executed = False
        with write_transaction(self._db):
            claimed = schema_operator.claim(self._db, decision)
        if claimed is None:
            return
        self.decided += 1
        log.info("operator: %s for run %s: %s", decision.intent, decision.run_id, decision.reason)
        if action is None:
            self._announce(decision)
            return
        self.pending[decision.id] = decision
        action(decision)

    def _executed(self, decision_id: int, error: str) -> None:
        decision = self.pending.pop(decision_id, None) or schema_operator.decision(self._db, decision_id)
        if decision is None:
            return
        with write_transaction(self._db):
            if error:
                decision.reason = f"{decision.reason}; action failed: {error}"
                schema_operator.set_reason(self._db, decision_id, decision.reason)
            else:
                decision.executed = True
                schema_operator.mark_executed(self._db, decision_id)
        if error:
            log.warning("operator: action failed for run %s intent=%s: %s", decision.run_id, decision.intent, error)
        self._announce(decision)
        if not error and decision.intent in (COMMIT_READY, PR_READY):
            self._delivery(decision.run_id)  # committed: a pull request may be next

    def _announce(self, decision: Decision) -> None:
        self.system.services.decisions.publish(decision)
        self._current_notifier().notify(decision)
        self._consult(decision)

    def _current_notifier(self) -> Notifier:
        """The notifier for the daemon's policy as it is now (re-read when a run is planned)."""
        settings = self.system.services.policy.operator
        if self.notifier is None or settings != self.notifier_settings:
            if self.notifier is not None:
                self.notifier.close(timeout=2.0)
            self.notifier, self.notifier_settings = Notifier(settings), settings
        return self.notifier

    # -- actions --------------------------------------------------------------------------

    def _escalate(self, decision: Decision) -> None:
        """Raise the control thread to urgent and say why in it; executed once the post is accepted."""
        thread_id, decision_id = decision.thread_id, decision.id
        if not thread_id:
            self.tell_self(_Executed(decision_id))
            return
        self._submit(SetPriorityRequest(priority="urgent", actor_type="system", actor_name=ACTOR_NAME), thread_id,
                     decision, report=False)
        self._submit(AddPostRequest(body=f"Operator: {decision.reason}; priority raised to urgent.",
                                    actor_type="system", actor_name=ACTOR_NAME), thread_id, decision, report=True)

    def _submit(self, request: Any, thread_id: str, decision: Decision, *, report: bool) -> None:
        decision_id = decision.id

        def accepted(_answer: Accepted) -> Any:
            return _Executed(decision_id) if report else None

        def refused(error: BaseException) -> Any:
            return _Executed(decision_id, f"the forum refused {type(request).__name__}: {error}")

        reply = self.reply_to_self(accepted, refused)
        if not self.system.tell(INTAKE, Request(body=Submit(request, thread_id, default_actor_type="system"),
                                                reply=reply)):
            self.tell_self(_Executed(decision_id, "the forum intake is not running"))

    def _stop_stale_run(self, decision: Decision) -> None:
        self._ask_runs(decision, StopRun(decision.run_id))

    def _ask_runs(self, decision: Decision, command: Any) -> None:
        decision_id = decision.id
        reply = self.reply_to_self(lambda _value: _Executed(decision_id),
                            lambda error: _Executed(decision_id, str(error) or type(error).__name__))
        if not self.system.tell(RUNS, Request(body=command, reply=reply)):
            self.tell_self(_Executed(decision_id, "the run supervisor is not running"))

    def _agent_decided(self, decision_id: int) -> None:
        decision = schema_operator.decision(self._db, decision_id)
        if decision is None:
            return
        self.decided += 1
        if decision.intent == ESCALATE_BLOCKED and not decision.executed:
            decision.thread_id = decision.thread_id or self._control_thread(decision.run_id, decision.agent_name)
            self.pending[decision.id] = decision
            self._escalate(decision)
            return
        self._announce(decision)

    def _control_thread(self, run_id: str, agent_name: str) -> str:
        row = self._db.execute("SELECT thread_id FROM forum_control_state WHERE run_id = ? AND agent_name = ?"
                               " AND thread_id != ''", (run_id, agent_name)).fetchone()
        return str(row[0]) if row else ""

    def _resume_unfinished(self) -> None:
        """Escalations claimed but not confirmed before the last stop: carry them out now."""
        rows = self._db.execute("SELECT id FROM operator_decisions WHERE executed = 0 AND intent IN (?, ?)"
                                " AND thread_id != '' AND reason NOT LIKE '%action failed:%'",
                                (ESCALATE_GUIDANCE, ESCALATE_BLOCKED)).fetchall()
        for (decision_id,) in rows:
            decision = schema_operator.decision(self._db, decision_id)
            if decision is not None:
                log.info("operator: carrying out escalation %d of run %s again", decision.id, decision.run_id)
                self.pending[decision.id] = decision
                self._escalate(decision)

    # -- LLM assist -----------------------------------------------------------------------

    def _consult(self, decision: Decision) -> None:
        settings = self.system.services.policy.operator.llm
        if settings.mode.strip().lower() == "off" or decision.source != "rule":
            return
        context = rules.llm_context(self._db, decision)
        if self.llm_pool is None:
            self.llm_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="operator-llm")
        ref, decision_id = self.actor_ref, decision.id

        def ask() -> None:
            self._tell(ref, _Suggested(decision_id, llm.consult(settings, context)))

        self.llm_pool.submit(ask)

    def _suggested(self, decision_id: int, suggestion: Suggestion | None) -> None:
        decision = schema_operator.decision(self._db, decision_id)
        if decision is None or suggestion is None:
            return
        with write_transaction(self._db):
            schema_operator.set_suggestion(self._db, decision_id, suggestion)
        mode = self.system.services.policy.operator.llm.mode.strip().lower()
        merged = llm.merge(mode, decision.intent, decision.executed, suggestion)
        if merged.source != "llm" or merged.intent == decision.intent:
            if merged.note:
                log.info("operator: run %s: %s", decision.run_id, merged.note)
            return
        # ``auto`` only: the LLM asked for an escalation the rules did not make; it executes nothing.
        escalation = Decision(run_id=decision.run_id, intent=merged.intent, source="llm", cause=f"llm:{decision.id}",
                              reason=f"llm: {suggestion.reason or 'escalation suggested'}",
                              thread_id=decision.thread_id, ticket=decision.ticket, agent_name=decision.agent_name,
                              workspace=decision.workspace, run_status=decision.run_status, tickets=decision.tickets,
                              llm=suggestion)
        self._decide(escalation)
