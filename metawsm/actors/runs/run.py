"""Run[<run_id>]: one run's lifecycle; supervises its TmuxAgent children (one_for_one).

The run's durable state is in SQLite (status with compare-and-set transitions, steps,
agents), so a restarted Run actor — or a restarted daemon — resumes where it was: steps
not done yet are executed, live agents are re-attached, signals are re-evaluated.

A command that needs its agents (stop and close kill their sessions, resume and restart start
fresh ones) never waits for them on this thread: it asks every agent at once, with answers
that come back as messages, and answers its caller once the last agent answered (or after
``AGENT_TIMEOUT_SECONDS``).  Meanwhile the Run keeps supervising its agents and answering
pings; the run's own work (other commands, control signals, agent reports) is postponed and
handled in order afterwards, as if it had queued behind the command.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from metawsm import ids
from metawsm.actors.bridge import CallbackReply
from metawsm.actors.errors import ActorCrashed, ActorError, ActorTimeout, ActorUnavailable, Refusal
from metawsm.actors.forum.messages import INTAKE, Submit
from metawsm.actors.managed import DEFERRED, ActorContext
from metawsm.actors.messages import Request
from metawsm.actors.operator.messages import RunNews, tell_operator
from metawsm.actors.runs.agent import AgentLaunch, TmuxAgent
from metawsm.actors.runs.messages import (
    AgentExited,
    AgentFailed,
    CloseRun,
    CommitRun,
    ControlChanged,
    Execute,
    IterateRun,
    KillSession,
    MergeRun,
    OpenPullRequests,
    RestartAgent,
    ResumeRun,
    StartSession,
    StopRun,
    SyncReviews,
)
from metawsm.actors.runs.refusals import PROVIDER_ERRORS, provider_errors_refused
from metawsm.actors.supervisor import ChildInfo, ChildSpec, RestartType, Strategy, Supervisor
from metawsm.clock import now_text
from metawsm.forum.requests import AddPostRequest, OpenThreadRequest
from metawsm.runs import delivery, forge, mcp_config, store
from metawsm.runs.agent_env import SHIM_NAME, AgentIdentity, agent_env, install_shim, shim_dir, with_agent_token
from metawsm.runs.gates import close_blockers
from metawsm.runs.model import (
    LIVE,
    STEP_COMMIT,
    STEP_ITERATE,
    STEP_MERGE,
    STEP_PR,
    STEP_REVIEW,
    GateBlocked,
    RunError,
    RunGone,
    RunStateRefused,
    RunStatus,
    transition_allowed,
)
from metawsm.runs.planner import STEP_AGENT, STEP_DOCS, STEP_RUN_FILE, STEP_VERIFY, STEP_WORKSPACE
from metawsm.runs.snapshot import control_rows, guidance_qa
from metawsm.runs.tmux import Tmux
from metawsm.runs.wiring import docs_provider_for, source_repo, workspace_provider_for

log = logging.getLogger("metawsm.runs")

S = RunStatus

AGENT_TIMEOUT_SECONDS = 15.0  # how long a command waits for its agents' answers


class _AgentAnswered(msgspec.Struct, frozen=True):
    """An agent answered a request of operation ``operation`` (built on the agent's thread)."""

    operation: int
    child_id: str
    error: Any = None  # the exception the request failed with; None when it succeeded


class _AgentsOverdue(msgspec.Struct, frozen=True):
    """Operation ``operation`` has waited ``AGENT_TIMEOUT_SECONDS`` for its agents."""

    operation: int


class _DeliveryDone(msgspec.Struct, frozen=True):
    """The worker thread of delivery operation ``operation`` finished (built on that thread)."""

    operation: int
    result: Any = None  # what the work returned (e.g. a CommitReport)
    error: Any = None  # the exception it raised; None when it succeeded


# The Run's mailbox, besides the SupervisorMessage it inherits (its agents' exit reports).
# Requests, from the RunSupervisor: StopRun, ResumeRun, RestartAgent and CloseRun, each answered
# with the run id once done (after the agents it waits for); CommitRun and MergeRun, answered
# with the CommitReport or MergeReport once their worker thread is done; IterateRun, answered
# with the IterateReport (once the sessions of a stopped run started again); OpenPullRequests,
# answered with the PrReport once its worker thread is done; SyncReviews, answered with the
# ReviewSyncReport once its worker thread is done.  Tells: Execute (its
# own, carrying the CreateRun reply), ControlChanged (new control signals), AgentFailed and
# AgentExited (from its agents), _AgentAnswered / _AgentsOverdue, which finish a command waiting
# for agents, and _DeliveryDone, which finishes a delivery command.
RunMessage = (
    StopRun | ResumeRun | RestartAgent | CloseRun | CommitRun | MergeRun | IterateRun | OpenPullRequests
    | SyncReviews | Execute | ControlChanged | AgentFailed | AgentExited | _AgentAnswered | _AgentsOverdue
    | _DeliveryDone
)


class _Operation:
    """A command waiting for its agents' answers (a Run has at most one at a time)."""

    def __init__(self, number: int, message: Any, then: Callable[[], None], strict: bool) -> None:
        self.number = number
        self.message = message  # what every agent is asked
        self.then = then  # finishes the command once every agent answered
        self.strict = strict  # an agent's failure fails the whole command (the Run carries on)
        self.waiting: dict[str, str] = {}  # child id -> path, for the agents yet to answer
        self.reply: Any = None  # the command's reply, deferred while it waits
        self.answer: Any = None  # what the command answers once done (None: the run id)


class RunActor(Supervisor):
    kind: ClassVar[str] = "run"

    def __init__(self, ctx: ActorContext, run_id: str, start_reply: Any = None) -> None:
        super().__init__(ctx, Strategy.ONE_FOR_ONE, children=())
        self.run_id = run_id
        self._start_reply = start_reply
        self._last_status = ""
        self._operation: _Operation | None = None
        self._operations = 0
        self._delivery_finish: Callable[[Any, BaseException | None], Any] | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        services = self.system.services
        self.conn = services.db.connect()
        row = store.load_run(self.conn, self.run_id)
        self.spec = row.spec
        self.policy = self.spec.policy_or(services.policy)  # the policy the run was planned with
        self.workspaces = workspace_provider_for(self.spec, self.policy)
        self.docs = docs_provider_for(self.spec)
        self.tmux = Tmux(self.spec.tmux_socket)
        status = self._last_status = row.status
        if status in (S.CREATED, S.PLANNING):
            self.tell_self(Execute(reply=self._start_reply))
            self._start_reply = None
            return
        if status in LIVE or status == S.FAILED:
            self._attach_agents()
        self._evaluate_control()

    def teardown(self) -> None:
        operation, self._operation = self._operation, None
        if operation is not None and operation.reply is not None:
            operation.reply.fail(ActorUnavailable(self.path, "stopped"))
        super().teardown()
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        details = super().describe()
        # describe() runs on the inspecting thread: it must not touch self.conn (SQLite objects
        # belong to the actor's thread), so it shows the status this actor last read.
        spec = getattr(self, "spec", None)  # None until setup() has run
        details.update({"run_id": self.run_id, "mode": spec.mode if spec else "", "status": self._last_status,
                        "tickets": spec.tickets if spec else []})
        return details

    def handle(self, message: Any) -> Any:
        try:
            match message:
                case _AgentAnswered():
                    self._agent_answered(message)
                case _AgentsOverdue(operation=number):
                    self._agents_overdue(number)
                case _DeliveryDone():
                    self._delivery_done(message)
                case (StopRun() | ResumeRun() | RestartAgent() | CloseRun() | CommitRun() | MergeRun() | IterateRun()
                      | OpenPullRequests() | SyncReviews() | Execute() | ControlChanged() | AgentFailed()
                      | AgentExited()) if self._operation is not None:
                    return self.postpone(message)  # handled, in order, once the operation is done
                case Execute(reply=reply):
                    self._execute(reply)
                case ControlChanged() | AgentExited():
                    self._evaluate_control()
                case AgentFailed():
                    self._agent_failed(message)
                # A command git, tmux or the filesystem refuses is answered with their reason; it
                # never crashes the run (see refusals.py).
                case (StopRun() | ResumeRun() | RestartAgent() | CloseRun() | CommitRun() | MergeRun() | IterateRun()
                      | OpenPullRequests() | SyncReviews()):
                    with provider_errors_refused():
                        return self._command(message)
                case _:
                    return super().handle(message)
            return None
        finally:
            if not self.actor_stopped.is_set():  # a postponed message replayed here may have crashed it
                self._status()  # keep the status describe() shows current

    def _command(self, message: Any) -> Any:
        match message:
            case StopRun():
                return self._stop_run()
            case ResumeRun():
                return self._resume_run()
            case RestartAgent(agent=agent):
                return self._restart_agents(agent)
            case CloseRun():
                return self._close_run(message)
            case CommitRun():
                return self._commit(message)
            case MergeRun():
                return self._merge(message)
            case IterateRun():
                return self._iterate(message)
            case OpenPullRequests():
                return self._open_pull_requests(message)
            case SyncReviews():
                return self._sync_reviews(message)
        raise TypeError(f"not a run command: {type(message).__name__}")

    # -- steps ----------------------------------------------------------------------------

    def _execute(self, reply: Any) -> None:
        try:
            if self._status() != S.PLANNING:
                self._transition(S.PLANNING, "executing steps")
            retries = max(0, self.policy.execution.step_retries)
            for step in store.setup_steps(self.conn, self.run_id):
                if step.status == "done":
                    continue
                error = ""
                for attempt in range(retries + 1):
                    store.update_step(self.conn, self.run_id, step.ordinal, "running")
                    try:
                        self._run_step(step.ticket, step.name)
                        error = ""
                        break
                    except Exception as exc:  # noqa: BLE001 - a step failure is recorded, not a crash
                        error = str(exc) or type(exc).__name__
                        log.warning("run %s step %s (%s) attempt %d failed: %s", self.run_id, step.name,
                                    step.ticket, attempt + 1, error)
                if error:
                    store.update_step(self.conn, self.run_id, step.ordinal, "failed", error)
                    message = f"step {step.name} for {step.ticket} failed: {error}"
                    self._transition(S.FAILED, error=message)
                    return
                store.update_step(self.conn, self.run_id, step.ordinal, "done")
            self._transition(S.RUNNING, "agents started")
            self._evaluate_control()
        finally:
            if reply is not None:
                reply.resolve(self.run_id)

    def _run_step(self, ticket: str, name: str) -> None:
        workspace = self._workspace_of(ticket)
        if name == STEP_VERIFY:
            self.docs.verify_ticket(ticket)
        elif name == STEP_WORKSPACE:
            self.workspaces.create(workspace, self.spec.repos)
        elif name == STEP_DOCS:
            home = self.spec.doc_home_repo
            store.record_doc_sync(self.conn, self.run_id, ticket, workspace, "pending")
            try:
                self.docs.seed(self._repo_path(workspace, home), source_repo(self.spec, self.policy, home), ticket,
                               self.spec.doc_seed_mode)
            except Exception as error:
                store.record_doc_sync(self.conn, self.run_id, ticket, workspace, "failed",
                                      error=str(error) or type(error).__name__)
                raise
            revision = delivery.head_of(self._repo_path(workspace, home))
            store.record_doc_sync(self.conn, self.run_id, ticket, workspace, "synced", revision=revision)
        elif name == STEP_RUN_FILE:
            self._write_run_files(ticket, workspace)
        elif name.startswith(STEP_AGENT + ":"):
            agent_name = name.split(":", 1)[1]
            self._start_agent(agent_name, workspace, fresh=True)
        else:
            raise RunError(f"unknown step {name}")

    # -- agents ---------------------------------------------------------------------------

    def _launch(self, agent_name: str, workspace: str) -> AgentLaunch:
        spec, services = self.spec, self.system.services
        agent = next(a for a in spec.agents if a.name == agent_name)
        row = next(r for r in store.agents(self.conn, self.run_id)
                   if r.agent_name == agent_name and r.workspace == workspace)
        ticket = self._ticket_of(workspace)
        ws_dir = Path(spec.workspace_root) / workspace
        log_dir = Path(services.base_dir) / ".metawsm" / "logs"
        bin_dir = shim_dir(services.db.path)
        identity = AgentIdentity(run_id=spec.run_id, ticket=ticket, agent=agent_name, workspace=workspace,
                                 run_file=str(ws_dir / ".metawsm" / "run.json"))
        return AgentLaunch(
            run_id=spec.run_id, ticket=ticket, agent=agent, workspace=workspace, session=row.session_name,
            socket=spec.tmux_socket, workdir=row.workspace_path, log_path=str(log_dir / f"{row.session_name}.log"),
            env=agent_env(identity, server_url=services.server_url, bin_dir=bin_dir), bin_dir=str(bin_dir),
        )

    def _tokens(self) -> Any:
        services = self.system.services
        return services.tokens if services.auth_enabled else None

    def _revoke_tokens(self) -> None:
        """The run is over: its agents' tokens stop working now."""
        tokens = self.system.services.tokens
        if tokens is not None:
            tokens.revoke_run(self.run_id)

    def _child_id(self, agent_name: str, workspace: str) -> str:
        return agent_name if len(self.spec.tickets) == 1 else f"{agent_name}@{workspace}"

    def _start_agent(self, agent_name: str, workspace: str, fresh: bool) -> None:
        launch = self._launch(agent_name, workspace)
        if fresh:
            if self.tmux.has_session(launch.session):
                self.tmux.kill_session(launch.session)
            install_shim(Path(launch.bin_dir))  # an OSError fails the step: the agent could not report
            Path(launch.log_path).parent.mkdir(parents=True, exist_ok=True)
            env = with_agent_token(launch.env, self._tokens(), run_id=self.run_id, ticket=launch.ticket,
                                   agent=agent_name)
            info = self.tmux.new_session(launch.session, launch.workdir, launch.agent.command, env,
                                         Path(launch.log_path))
            store.update_agent(self.conn, self.run_id, agent_name, workspace, status="running", health="healthy",
                               pane_pid=info.pane_pid, restarts_used=0, last_error="")
        child_id = self._child_id(agent_name, workspace)
        if self.child(child_id) is not None:
            return
        probe = self._progress_probe(workspace)
        spec = ChildSpec.of(TmuxAgent, launch, probe, fresh, id=child_id, name=f"TmuxAgent[{child_id}]",
                            restart=RestartType.TRANSIENT)
        self.start_child(spec)

    def _start_sessions(self, rows: list[store.AgentRow], then: Callable[[], None], answer: Any = None) -> Any:
        """A new session for each agent, watched, with a full restart budget; then ``then()``.

        An agent actor that is still there (e.g. one that spent its budget and stopped
        watching, in a failed run being resumed) is asked to start the session itself;
        starting the session behind its back would leave the new session unwatched.
        """
        operation = self._begin(StartSession(), then, strict=True)
        operation.answer = answer
        for row in rows:
            child = self.child(self._child_id(row.agent_name, row.workspace))
            if child is not None and child.alive:
                self._ask(operation, child)
            else:
                self._start_agent(row.agent_name, row.workspace, fresh=True)
        return self._wait(operation)

    def _kill_sessions(self, then: Callable[[], None]) -> Any:
        """Every agent kills its session (and stops watching it); then ``then()``.

        A session no agent actor watches (this Run was started again after a stop or close
        that did not finish) is killed here, so repeating the command finishes it.
        """
        operation = self._begin(KillSession(), then, strict=False)
        watched: set[str] = set()
        for child in self.children():
            if child.alive:
                self._ask(operation, child)
                watched.add(child.id)
        for row in store.agents(self.conn, self.run_id):
            unwatched = self._child_id(row.agent_name, row.workspace) not in watched
            if row.session_name and row.status != "cleaned" and unwatched:
                self.tmux.kill_session(row.session_name)
        return self._wait(operation)

    def _progress_probe(self, workspace: str) -> Any:
        provider, repos = self.workspaces, list(self.spec.repos)

        def fingerprint() -> str:
            return "|".join(provider.status_fingerprint(workspace, repo) for repo in repos)

        return fingerprint

    def _attach_agents(self) -> None:
        for row in store.agents(self.conn, self.run_id):
            if row.status in ("running", "pending") and row.session_name:
                try:
                    self._start_agent(row.agent_name, row.workspace, fresh=False)
                except Exception as error:  # noqa: BLE001 - one broken agent must not stop the others
                    log.warning("run %s: could not attach agent %s: %s", self.run_id, row.agent_name, error)

    def _require_workspaces(self, rows: list[store.AgentRow], done: str) -> None:
        """Refuse (410) to start agents whose workspace is gone: tmux cannot start a session in a
        directory that does not exist, and no step of this run creates it again."""
        steps = store.steps(self.conn, self.run_id)
        if not all(step.status == "done" for step in steps if step.name == STEP_WORKSPACE):
            return  # resume provisions it first
        for row in rows:
            if not row.workspace_path or Path(row.workspace_path).is_dir():
                continue
            if row.status == "cleaned":
                raise RunGone(f"run {self.run_id} was cleaned up: workspace {row.workspace} is removed, so it "
                              f"cannot be {done}; start a new run (the branch keeps the work)")
            raise RunGone(f"run {self.run_id} cannot be {done}: the workspace of agent {row.agent_name}, "
                          f"{row.workspace_path}, does not exist", code="workspace_gone")

    def _stop_agent_actors(self) -> None:
        for child in self.children():
            self.remove_child(child.id)

    def _agent_failed(self, message: AgentFailed) -> None:
        reason = f"agent {message.agent}@{message.workspace} failed: {message.reason}"
        status = self._status()
        if self.spec.mode == "bootstrap" or self._all_agents_failed():
            if status not in (S.FAILED, S.CLOSED, S.CLOSING, S.STOPPED):
                self._transition(S.FAILED, error=reason)
        else:
            store.record_event(self.conn, self.run_id, "agent_failed", status, status, reason)

    def _all_agents_failed(self) -> bool:
        return all(r.status == "failed" for r in store.agents(self.conn, self.run_id))

    # -- control signals ------------------------------------------------------------------

    def _evaluate_control(self) -> None:
        status = self._status()
        if status not in (S.RUNNING, S.AWAITING_GUIDANCE, S.COMPLETED):
            return
        controls = control_rows(self.conn, self.run_id)
        pending = [c for c in controls.values() if c.pending]
        if pending and status != S.AWAITING_GUIDANCE:
            first = pending[0]
            self._transition(S.AWAITING_GUIDANCE,
                             f"guidance requested by {first.agent_name}: {first.question}")
            return
        if not pending and status == S.AWAITING_GUIDANCE:
            self._transition(S.RUNNING, "guidance answered")
            status = S.RUNNING
        if self.spec.mode == "bootstrap" and status == S.RUNNING and self._all_done(controls):
            why = "every agent signalled completion and passed validation"
            self._transition(S.COMPLETED, why)

    def _all_done(self, controls: dict[str, Any]) -> bool:
        names = {a.name for a in self.spec.agents}
        return bool(names) and all(
            n in controls and controls[n].completed and controls[n].validation_status == "passed" for n in names
        )

    # -- commands -------------------------------------------------------------------------

    def _stop_run(self) -> Any:
        status = self._status()
        if status == S.STOPPED:
            return self.run_id
        if status != S.STOPPING:  # stopping: a stop that did not finish; this one finishes it
            if not transition_allowed(status, S.STOPPING):
                raise RunStateRefused(f"run {self.run_id} is {status}; it cannot be stopped")
            self._transition(S.STOPPING, "stop requested")
        return self._kill_sessions(then=self._stopped)

    def _stopped(self) -> None:
        self._stop_agent_actors()
        self._transition(S.STOPPED, "agents stopped")
        self._revoke_tokens()  # resume starts the agents again, each with a new token

    def _resume_run(self) -> Any:
        status = self._status()
        rows = store.agents(self.conn, self.run_id)
        self._require_workspaces(rows, "resumed")
        if status in LIVE:
            return self.run_id
        if status not in (S.STOPPED, S.PAUSED, S.FAILED):
            raise RunStateRefused(f"run {self.run_id} is {status}; only stopped, paused or failed runs can be resumed")
        if any(step.status != "done" for step in store.setup_steps(self.conn, self.run_id)):
            store.reset_steps(self.conn, self.run_id)
            self._execute(None)
            return self.run_id
        return self._start_sessions(rows, then=self._resumed)

    def _resumed(self) -> None:
        self._transition(S.RUNNING, "resumed")
        self._evaluate_control()

    def _restart_agents(self, agent: str) -> Any:
        status = self._status()
        if status in (S.CLOSING, S.CLOSED, S.STOPPING):
            raise RunStateRefused(f"run {self.run_id} is {status}; it cannot be restarted")
        only = agent.strip()
        rows = [r for r in store.agents(self.conn, self.run_id) if not only or r.agent_name == only]
        if only and not rows:
            raise RunError(f'run {self.run_id} has no agent "{only}"')
        self._require_workspaces(rows, "restarted")
        if any(step.status != "done" for step in store.setup_steps(self.conn, self.run_id)):
            # Its workspaces or run files may not exist yet: resume runs the steps left.
            raise RunStateRefused(f"run {self.run_id} is {status} with steps not done; resume it instead of "
                                  "restarting its agents")

        def restarted() -> None:
            if status not in LIVE:
                self._transition(S.RUNNING, "restarted")
            self._evaluate_control()

        return self._start_sessions(rows, then=restarted)

    def _close_run(self, command: CloseRun) -> Any:
        status = self._status()
        if status == S.CLOSED:
            return self.run_id
        if status == S.CLOSING:  # a close that did not finish (its gates had passed): finish it
            return self.run_id if command.dry_run else self._kill_sessions(then=self._closed)
        # A run awaiting guidance is checked too, so `close` names the gate that blocks it
        # ("... has N pending forum guidance request(s); close blocked") instead of its status.
        if status not in (S.COMPLETED, S.RUNNING, S.STOPPED, S.FAILED, S.AWAITING_GUIDANCE):
            raise RunStateRefused(f"run {self.run_id} is {status}; it can be closed once completed, stopped or failed")
        blockers = close_blockers(self.conn, self.run_id, self._dirty_files)
        if blockers:
            raise GateBlocked(blockers[0])
        if status == S.AWAITING_GUIDANCE:
            raise GateBlocked(f"run {self.run_id} is awaiting_guidance; answer the pending guidance request(s) "
                              "before closing; close blocked")
        jobs = self._merge_jobs() if command.merge else []
        if command.merge:  # refused as a whole, before anything changes (merge_refused, one line per problem)
            delivery.merge(self.run_id, jobs, push=False, dry_run=True)
        if command.dry_run:
            return self.run_id
        entry = command.changelog_entry.strip()
        if entry:
            for workspace in self._workspace_names():
                ticket = self._ticket_of(workspace)
                commit = delivery.append_changelog(self._repo_path(workspace, self.spec.doc_home_repo), ticket, entry,
                                                   now_text())
                store.record_event(self.conn, self.run_id, "changelog", status, status,
                                   f"{ticket}: changelog entry committed as {commit[:12]}")
        self._transition(S.CLOSING, "close gates passed")
        if command.merge:
            try:
                report = delivery.merge(self.run_id, jobs, push=False, dry_run=False)
            except Exception as error:  # any merge failure is reported and the run goes back to completed
                # Nothing was closed: go back to completed so the user can fix it and retry.
                self._transition(S.COMPLETED, f"merge failed: {error}")
                if isinstance(error, Refusal):
                    raise
                raise RunError(f"merge failed: {error}") from None
            store.record_event(self.conn, self.run_id, STEP_MERGE, S.CLOSING, S.CLOSING, delivery.merge_summary(report))
        return self._kill_sessions(then=self._closed)

    def _closed(self) -> None:
        self._stop_agent_actors()
        self._transition(S.CLOSED, "closed")
        self._revoke_tokens()
        self.tell_self_stop()

    # -- delivery -------------------------------------------------------------------------

    def _commit(self, command: CommitRun) -> Any:
        status = self._status()
        if not command.dry_run and status not in (S.COMPLETED, S.STOPPED):
            raise RunStateRefused(f"run {self.run_id} is {status}; commit once it is completed or stopped (its agents "
                                  "may still be changing the files)")
        git_pr = self.policy.git_pr
        if git_pr.mode.strip() == "off":
            raise RunError("git_pr.mode is off; commit workflow disabled", code="delivery_disabled", status=409)
        brief = store.brief(self.conn, self.run_id)
        goal = brief.goal if brief is not None else ""
        jobs: list[delivery.CommitJob] = []
        for workspace in self._workspace_names():
            ticket = self._ticket_of(workspace)
            text = command.message.strip() or delivery.default_message(ticket, goal, self.run_id)
            for repo in self.spec.repos:
                jobs.append(delivery.CommitJob(
                    ticket=ticket, workspace=workspace, repo=repo, path=str(self.workspaces.repo_path(workspace, repo)),
                    branch=self.workspaces.branch(workspace), base_branch=self.spec.base_branch, message=text))
        settings = delivery.CommitSettings(required_checks=list(git_pr.required_checks), require_all=git_pr.require_all,
                                           test_commands=list(git_pr.test_commands),
                                           forbidden_file_patterns=list(git_pr.forbidden_file_patterns))
        message = command.message.strip() or (jobs[0].message if jobs else "")
        log_path = delivery.log_path_for(self.system.services.base_dir, self.run_id)
        ordinals: list[int] = []
        if not command.dry_run:  # a dry run records nothing
            for ticket in dict.fromkeys(job.ticket for job in jobs):
                ordinal = store.delivery_step(self.conn, self.run_id, ticket, STEP_COMMIT)
                store.update_step(self.conn, self.run_id, ordinal, "running")
                ordinals.append(ordinal)
        run_id, dry_run = self.run_id, command.dry_run

        def work() -> delivery.CommitReport:
            return delivery.commit(run_id, jobs, settings, message=message, log_path=log_path, dry_run=dry_run)

        def finish(result: Any, error: BaseException | None) -> Any:
            return self._delivered(STEP_COMMIT, ordinals, status, result, error)

        return self._deliver(command, work, finish)

    def _merge(self, command: MergeRun) -> Any:
        status = self._status()
        if not command.dry_run and status not in (S.COMPLETED, S.STOPPED):
            raise RunStateRefused(f"run {self.run_id} is {status}; merge once it is completed or stopped (its agents "
                                  "may still be changing the files)")
        jobs = self._merge_jobs()
        ordinals: list[int] = []
        if not command.dry_run:  # a dry run records nothing
            for ticket in dict.fromkeys(job.ticket for job in jobs):
                ordinal = store.delivery_step(self.conn, self.run_id, ticket, STEP_MERGE)
                store.update_step(self.conn, self.run_id, ordinal, "running")
                ordinals.append(ordinal)
        run_id, push, dry_run = self.run_id, command.push, command.dry_run

        def work() -> delivery.MergeReport:
            return delivery.merge(run_id, jobs, push=push, dry_run=dry_run)

        def finish(result: Any, error: BaseException | None) -> Any:
            if error is None and not dry_run:
                for repo in result.repos:
                    if repo.how == "pull_request":
                        store.set_pull_request_state(self.conn, self.run_id, repo.ticket, repo.repo, "merged")
            return self._delivered(STEP_MERGE, ordinals, status, result, error)

        return self._deliver(command, work, finish)

    def _iterate(self, command: IterateRun) -> Any:
        status = self._status()
        if status not in (S.COMPLETED, S.RUNNING, S.STOPPED):
            raise RunStateRefused(f"run {self.run_id} is {status}; only a completed, running or stopped run can "
                                  "iterate")
        feedback = command.feedback.strip()
        if not feedback:
            raise RunError("feedback cannot be empty (--feedback)")
        only = command.agent.strip()
        rows = [r for r in store.agents(self.conn, self.run_id) if not only or r.agent_name == only]
        if only and not rows:
            names = ", ".join(sorted({r.agent_name for r in store.agents(self.conn, self.run_id)}))
            raise RunError(f'run {self.run_id} has no agent "{only}"; its agents: {names}')
        workspaces = sorted({r.workspace for r in rows})
        files = {ws: Path(self.spec.workspace_root) / ws / ".metawsm" / "feedback.md" for ws in workspaces}
        report = delivery.IterateReport(
            run_id=self.run_id, dry_run=command.dry_run, iteration=store.iteration_count(self.conn, self.run_id) + 1,
            status=S.RUNNING.value, agents=sorted({r.agent_name for r in rows}), files=[str(f) for f in files.values()])
        if status == S.STOPPED:
            self._require_workspaces(store.agents(self.conn, self.run_id), "iterated")
        if command.dry_run:
            return report
        # From here on, only completion and validation signals that come after this count.
        number, _ = store.record_iteration(self.conn, self.run_id, only, feedback)
        when = now_text()
        for workspace, path in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(delivery.feedback_section(number, when, feedback, only))
            for repo in self.spec.repos:  # never committed, whatever the layout
                checkout = self._repo_path(workspace, repo)
                if checkout.is_dir():
                    delivery.exclude_metawsm(checkout)
        threads = [self._post_feedback(workspace, number, feedback, only) for workspace in workspaces]
        for ticket in dict.fromkeys(self._ticket_of(ws) for ws in workspaces):
            ordinal = store.delivery_step(self.conn, self.run_id, ticket, STEP_ITERATE)
            store.update_step(self.conn, self.run_id, ordinal, "running")
            store.update_step(self.conn, self.run_id, ordinal, "done")
        store.record_event(self.conn, self.run_id, STEP_ITERATE, status, S.RUNNING,
                           f"iteration {number} for {only or 'every agent'}: {' '.join(feedback.split())[:200]}")
        report = msgspec.structs.replace(report, iteration=number, threads=threads)

        def announce() -> None:
            for row in rows:  # a short line in each agent's pane: where the feedback is
                if not row.session_name:
                    continue
                text = (f"New feedback from the operator (iteration {number}): read {files[row.workspace]} "
                        "(the last section), act on it, then signal completion and validation again.")
                try:
                    self.tmux.send_keys(row.session_name, text)
                except Exception as error:  # noqa: BLE001 - the feedback is in the file and the forum anyway
                    log.warning("run %s: could not type the feedback into %s: %s", self.run_id, row.session_name,
                                error)

        if status != S.STOPPED:
            if status == S.COMPLETED:
                self._transition(S.RUNNING, f"iteration {number}: feedback given")
            announce()
            return report

        def restarted() -> None:
            self._transition(S.RUNNING, f"iteration {number}: feedback given")
            announce()
            self._evaluate_control()

        return self._start_sessions(store.agents(self.conn, self.run_id), then=restarted, answer=report)

    def _post_feedback(self, workspace: str, number: int, feedback: str, agent: str) -> str:
        """Open a thread with the feedback in the run's forum (told, not asked: the intake's answer
        only matters when it refuses, and that is logged); returns the thread id."""
        thread_id = ids.new_id(ids.THREAD)
        ticket = self._ticket_of(workspace)
        title = f"Feedback, iteration {number} of run {self.run_id}" + (f" for {agent}" if agent else "")
        request = OpenThreadRequest(thread_id=thread_id, ticket=ticket, run_id=self.run_id, agent_name=agent,
                                    title=title, body=feedback, actor_type="operator", actor_name="operator")
        run_id = self.run_id

        def refused(error: BaseException) -> None:
            log.warning("run %s: the feedback of iteration %d was not posted in the forum: %s", run_id, number, error)

        reply = CallbackReply(lambda _accepted: None, refused)
        if not self.system.tell(INTAKE, Request(body=Submit(request, default_actor_type="operator"), reply=reply)):
            log.warning("run %s: the forum intake is not running; feedback %d not posted", self.run_id, number)
        return thread_id

    def _open_pull_requests(self, command: OpenPullRequests) -> Any:
        status = self._status()
        if not command.dry_run and status not in (S.COMPLETED, S.STOPPED):
            raise RunStateRefused(f"run {self.run_id} is {status}; push and open pull requests once it is completed "
                                  "or stopped (its agents may still be changing the files)")
        git_pr = self.policy.git_pr
        if git_pr.mode.strip() == "off":
            raise RunError("git_pr.mode is off; pull request workflow disabled", code="delivery_disabled", status=409)
        brief = store.brief(self.conn, self.run_id)
        controls = control_rows(self.conn, self.run_id)
        qa = [(q.question, q.answer) for q in (brief.qa if brief is not None else [])] + guidance_qa(self.conn,
                                                                                                      self.run_id)
        validations = [(name, c.validation_status, c.done_criteria) for name, c in sorted(controls.items())]
        known = {(row["ticket"], row["repo"]): row for row in store.pull_requests(self.conn, self.run_id)}
        goal = brief.goal if brief is not None else ""
        summary = next((line.strip() for line in goal.splitlines() if line.strip()), "") or f"run {self.run_id}"
        jobs: list[forge.PrJob] = []
        for workspace in self._workspace_names():
            ticket = self._ticket_of(workspace)
            body = command.body.strip() or forge.compose_body(
                run_id=self.run_id, ticket=ticket, goal=goal, scope=brief.scope if brief else "",
                done_criteria=brief.done_criteria if brief else "", qa=qa, validations=validations)
            for repo in self.spec.repos:
                checkout = self._repo_path(workspace, repo)
                title = command.title.strip() or f"[{ticket}] {summary}"[:72]
                if not command.title.strip() and len(self.spec.repos) > 1:
                    title += f" ({repo})"
                previous = known.get((ticket, repo))
                existing = previous["url"] if previous and previous["provider"] == "github" else ""
                jobs.append(forge.PrJob(
                    ticket=ticket, workspace=workspace, repo=repo, source=str(self._source(repo, checkout)),
                    checkout=str(checkout), branch=self.workspaces.branch(workspace), base_branch=self.spec.base_branch,
                    title=title, body=body, draft=command.draft, add_diffstat=not command.body.strip(),
                    existing_url=existing, labels=list(self.policy.git_pr.default_labels),
                    reviewers=list(self.policy.git_pr.default_reviewers)))
        ordinals: list[int] = []
        if not command.dry_run:
            for ticket in dict.fromkeys(job.ticket for job in jobs):
                ordinal = store.delivery_step(self.conn, self.run_id, ticket, STEP_PR)
                store.update_step(self.conn, self.run_id, ordinal, "running")
                ordinals.append(ordinal)
        run_id, provider, dry_run = self.run_id, git_pr.provider, command.dry_run

        def work() -> forge.PrReport:
            return forge.open_pull_requests(run_id, jobs, provider=provider, dry_run=dry_run)

        def finish(result: Any, error: BaseException | None) -> Any:
            if error is None and not dry_run:
                for view in result.pull_requests:
                    store.upsert_pull_request(self.conn, self.run_id, view)
            return self._delivered(STEP_PR, ordinals, status, result, error)

        return self._deliver(command, work, finish)

    def _sync_reviews(self, command: SyncReviews) -> Any:
        status = self._status()
        if status not in (S.COMPLETED, S.RUNNING, S.STOPPED):
            raise RunStateRefused(f"run {self.run_id} is {status}; review feedback is synced for a completed, "
                                  "running or stopped run")
        if command.dispatch and status == S.STOPPED:
            raise RunStateRefused(f"run {self.run_id} is stopped; resume it before dispatching review feedback "
                                  "(or sync without --dispatch)")
        rows = [r for r in store.pull_requests(self.conn, self.run_id) if r["provider"] == "github" and r["number"]]
        if not rows:
            raise RunError(f"run {self.run_id} has no pull request opened with the github provider; open them with "
                           "metawsm pr first")
        jobs = [forge.ReviewJob(ticket=r["ticket"], repo=r["repo"], url=r["url"],
                                checkout=str(self._repo_path(r["workspace"], r["repo"]))
                                if self._repo_path(r["workspace"], r["repo"]).is_dir() else self.spec.cwd)
                for r in rows]
        ordinals = []
        for ticket in dict.fromkeys(r["ticket"] for r in rows):
            ordinal = store.delivery_step(self.conn, self.run_id, ticket, STEP_REVIEW)
            store.update_step(self.conn, self.run_id, ordinal, "running")
            ordinals.append(ordinal)
        ignore = list(self.policy.git_pr.review_feedback.ignore_authors)

        def work() -> forge.ReviewFetch:
            return forge.fetch_reviews(jobs, ignore)

        def finish(result: Any, error: BaseException | None) -> Any:
            if error is not None:
                return self._delivered(STEP_REVIEW, ordinals, status, None, error)
            return self._delivered(STEP_REVIEW, ordinals, status, self._reviews_fetched(result, len(jobs),
                                                                                         command.dispatch), None)

        return self._deliver(command, work, finish)

    def _reviews_fetched(self, fetched: forge.ReviewFetch, pulls: int, dispatch: bool) -> forge.ReviewSyncReport:
        """Store the new review items, post them in the forum, and (``dispatch``) send the queued ones."""
        new = store.store_review_items(self.conn, self.run_id, fetched.items)
        threads: list[str] = []
        by_pull: dict[tuple[str, str, int], list[forge.ReviewItem]] = {}
        for item in new:
            by_pull.setdefault((item.ticket, item.repo, item.pr_number), []).append(item)
        for (ticket, repo, number), items in by_pull.items():
            thread_id = store.review_thread(self.conn, self.run_id, repo, number)
            text = f"Review feedback on {repo} #{number}:\n\n" + forge.review_text(items)
            if thread_id:
                request: Any = AddPostRequest(body=text, actor_type="system", actor_name="review-sync")
            else:
                thread_id = ids.new_id(ids.THREAD)
                request = OpenThreadRequest(thread_id=thread_id, ticket=ticket, run_id=self.run_id,
                                            title=f"Review feedback: {repo} #{number}", body=text,
                                            actor_type="system", actor_name="review-sync")
            store.set_review_thread(self.conn, self.run_id, repo, number, thread_id)
            self._submit(request, thread_id if isinstance(request, AddPostRequest) else "",
                         f"review feedback of {repo} #{number}")
            threads.append(thread_id)
        queued = store.queued_reviews(self.conn, self.run_id)
        dispatched, iteration = 0, 0
        if dispatch and queued:
            items = [forge.ReviewItem(**row) for row in queued]
            report = self._iterate(IterateRun(self.run_id, feedback="GitHub review feedback to address:\n"
                                              + forge.review_text(items)))
            store.mark_reviews_dispatched(self.conn, self.run_id)
            dispatched, iteration = len(items), report.iteration
        return forge.ReviewSyncReport(run_id=self.run_id, pull_requests=pulls, fetched=len(fetched.items),
                                      new=len(new), ignored=fetched.ignored, queued=len(queued) - dispatched,
                                      dispatched=dispatched, iteration=iteration, threads=threads)

    def _submit(self, request: Any, thread_id: str, what: str) -> None:
        """Tell the forum intake a write (its answer only matters when it refuses: logged)."""
        run_id = self.run_id

        def refused(error: BaseException) -> None:
            log.warning("run %s: %s was not posted in the forum: %s", run_id, what, error)

        reply = CallbackReply(lambda _accepted: None, refused)
        body = Submit(request, thread_id, default_actor_type="system")
        if not self.system.tell(INTAKE, Request(body=body, reply=reply)):
            log.warning("run %s: the forum intake is not running; %s not posted", run_id, what)

    def _merge_jobs(self) -> list[delivery.MergeJob]:
        """One merge per workspace and repository: the workspace branch into the run's base branch."""
        jobs: list[delivery.MergeJob] = []
        open_on_github = {(pr["repo"], pr["workspace"]): int(pr["number"])
                          for pr in store.pull_requests(self.conn, self.run_id)
                          if pr["provider"] == "github" and pr["state"] == "open" and pr["number"]}
        for workspace in self._workspace_names():
            ticket = self._ticket_of(workspace)
            for repo in self.spec.repos:
                checkout = self._repo_path(workspace, repo)
                jobs.append(delivery.MergeJob(
                    ticket=ticket, workspace=workspace, repo=repo, source=str(self._source(repo, checkout)),
                    checkout=str(checkout), branch=self.workspaces.branch(workspace),
                    base_branch=self.spec.base_branch, message=f"metawsm: merge {workspace} ({self.run_id})",
                    pull_request=open_on_github.get((repo, workspace), 0)))
        return jobs

    def _source(self, repo: str, checkout: Path) -> Path:
        """The source repository of a workspace's repo (whose base branch a merge moves)."""
        if self.spec.workspace_provider == "git_worktree":
            return source_repo(self.spec, self.policy, repo)
        found = delivery.source_of(checkout)
        if found is None:
            raise RunError(f'repo "{repo}": cannot tell the repository of {checkout}')
        return found

    def _deliver(self, command: Any, work: Callable[[], Any],
                 finish: Callable[[Any, BaseException | None], Any]) -> Any:
        """Run ``work`` on a worker thread (git, test commands: it may take minutes) and answer
        the command with ``finish(result, error)`` once it is done.  Meanwhile the Run keeps
        supervising its agents and answering pings; its other commands and signals are postponed,
        as for a command waiting for its agents."""
        operation = self._begin(command, then=lambda: None, strict=True)
        operation.reply = self.defer_reply()
        self._operation = operation
        self._delivery_finish = finish
        number, tell = operation.number, self.tell_self

        def run() -> None:
            try:
                result = work()
            except BaseException as error:  # noqa: BLE001 - handed to the Run's own thread, which decides
                tell(_DeliveryDone(number, error=error))
            else:
                tell(_DeliveryDone(number, result=result))

        threading.Thread(target=run, name=f"delivery-{self.run_id}", daemon=True).start()
        return DEFERRED

    def _delivery_done(self, done: _DeliveryDone) -> None:
        operation = self._operation
        if operation is None or operation.number != done.operation:
            return  # an operation of an earlier incarnation
        self._operation = None
        finish, self._delivery_finish = self._delivery_finish, None
        reply = operation.reply
        try:
            answer = finish(done.result, done.error) if finish is not None else None
        except Refusal as refusal:
            if reply is not None:
                reply.fail(refusal)
        except BaseException as exc:
            if reply is not None:
                reply.fail(ActorCrashed(self.path, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if reply is not None:
                reply.resolve(answer)
        self.replay_postponed()

    def _delivered(self, kind: str, ordinals: list[int], status: str, result: Any,
                   error: BaseException | None) -> Any:
        """Record a delivery command's outcome as its steps and an event; its answer, or raise."""
        if error is not None and isinstance(error, PROVIDER_ERRORS):
            error = RunError(str(error) or type(error).__name__)
        if error is not None and not isinstance(error, Refusal):
            for ordinal in ordinals:
                store.update_step(self.conn, self.run_id, ordinal, "failed", f"{type(error).__name__}: {error}")
            raise error  # a bug: the Run crashes, as if its handler had failed
        if error is not None:
            for ordinal in ordinals:
                store.update_step(self.conn, self.run_id, ordinal, "failed", str(error))
            if ordinals:
                store.record_event(self.conn, self.run_id, f"{kind}_refused", status, status,
                                   str(error).replace("\n", "; "))
            raise error
        for ordinal in ordinals:
            store.update_step(self.conn, self.run_id, ordinal, "done")
        if ordinals:
            text = (delivery.summary(result) if kind == STEP_COMMIT else delivery.merge_summary(result)
                    if kind == STEP_MERGE else forge.summary(result) if kind == STEP_PR
                    else f"{result.new} new review item(s), {result.dispatched} dispatched")
            store.record_event(self.conn, self.run_id, kind, status, status, text)
        return result

    # -- waiting for agents without blocking ------------------------------------------------

    def _begin(self, message: Any, then: Callable[[], None], *, strict: bool) -> _Operation:
        self._operations += 1
        return _Operation(self._operations, message, then, strict)

    def _ask(self, operation: _Operation, child: ChildInfo) -> None:
        """Send the operation's request to one agent; its answer comes back as _AgentAnswered."""
        number, child_id = operation.number, child.id
        reply = self.reply_to_self(lambda _value: _AgentAnswered(number, child_id),
                                   lambda error: _AgentAnswered(number, child_id, error))
        if self.tell_child(child_id, Request(body=operation.message, reply=reply)):
            operation.waiting[child_id] = child.path

    def _wait(self, operation: _Operation) -> Any:
        """What ``handle`` returns for a command: the run id at once when no agent was asked,
        else DEFERRED: the answer follows the last agent's."""
        if not operation.waiting:
            operation.then()
            return self.run_id if operation.answer is None else operation.answer
        operation.reply = self.defer_reply()
        self._operation = operation
        number = operation.number
        self.system.scheduler.call_later(AGENT_TIMEOUT_SECONDS, lambda: self.tell_self(_AgentsOverdue(number)))
        return DEFERRED

    def _agent_answered(self, answer: _AgentAnswered) -> None:
        operation = self._operation
        if operation is None or answer.operation != operation.number:
            return  # the answer of an operation that gave up waiting for it
        path = operation.waiting.pop(answer.child_id, None)
        if path is None:
            return
        if answer.error is not None and self._agent_request_failed(operation, path, answer.error):
            return
        if not operation.waiting:
            self._finish(operation)

    def _agents_overdue(self, number: int) -> None:
        operation = self._operation
        if operation is None or operation.number != number:
            return  # finished in time
        for path in list(operation.waiting.values()):
            if self._agent_request_failed(operation, path, ActorTimeout(path, AGENT_TIMEOUT_SECONDS)):
                return
        operation.waiting.clear()
        self._finish(operation)

    def _agent_request_failed(self, operation: _Operation, path: str, error: BaseException) -> bool:
        """Log an agent's failed answer; for a strict operation (starting sessions) also give the
        command up, answering the agent's reason: then True, and the caller stops there."""
        name = type(operation.message).__name__
        if not operation.strict:
            log.warning("run %s: %s failed for %s: %s", self.run_id, name, path, error)
            return False
        # A session that could not be started fails the command, and only the command: the run
        # keeps its status and this actor keeps going.  Crashing would not start the session
        # either, and a client repeating the command would crash it past its supervisor's
        # restart intensity, taking every other run down with it.
        self._operation = None
        if not isinstance(error, Refusal | ActorError):  # those already say what happened
            agent = path.rsplit("/", 1)[-1]
            error = RunError(f"run {self.run_id}: agent {agent} could not start its session: "
                             f"{type(error).__name__}: {error}")
        if operation.reply is not None:
            operation.reply.fail(error)
        else:
            log.warning("run %s: %s failed for %s: %s", self.run_id, name, path, error)
        self.replay_postponed()
        return True

    def _finish(self, operation: _Operation) -> None:
        """Every agent answered: finish the command, answer it, then handle what was postponed."""
        self._operation = None
        reply = operation.reply
        try:
            operation.then()
        except Refusal as refusal:
            if reply is not None:
                reply.fail(refusal)
            else:
                log.warning("run %s: %s", self.run_id, refusal)
        except BaseException as exc:
            if reply is not None:
                reply.fail(ActorCrashed(self.path, f"{type(exc).__name__}: {exc}"))
            raise
        else:
            if reply is not None:
                reply.resolve(self.run_id if operation.answer is None else operation.answer)
        self.replay_postponed()

    def tell_self_stop(self) -> None:
        try:
            self.actor_ref.stop(block=False)
        except Exception:  # noqa: BLE001 - already stopping: nothing to do
            pass

    def _dirty_files(self, workspace: str, repo: str) -> list[str]:
        path = Path(self.spec.workspace_root) / workspace / repo
        if not path.exists():
            return []
        dirty: list[str] = self.workspaces.dirty_files(workspace, repo)
        return dirty

    # -- helpers --------------------------------------------------------------------------

    def _transition(self, to_status: Any, message: str = "", error: str | None = None) -> str:
        """Move the run to ``to_status`` (see store.transition) and tell the operator."""
        previous = store.transition(self.conn, self.run_id, to_status, message, error=error)
        status = getattr(to_status, "value", to_status)
        if previous != status:
            tell_operator(self.system, RunNews(self.run_id, str(status)))
        return previous

    def _status(self) -> str:
        row = self.conn.execute("SELECT status FROM runs WHERE run_id = ?", (self.run_id,)).fetchone()
        self._last_status = row[0] if row else S.CLOSED.value
        return self._last_status

    def _workspace_names(self) -> list[str]:
        return sorted({r.workspace for r in store.agents(self.conn, self.run_id)})

    def _workspace_of(self, ticket: str) -> str:
        from metawsm.runs.planner import workspace_name

        return workspace_name(ticket, self.run_id)

    def _ticket_of(self, workspace: str) -> str:
        for ticket in self.spec.tickets:
            if self._workspace_of(ticket) == workspace:
                return ticket
        return self.spec.tickets[0]

    def _repo_path(self, workspace: str, repo: str) -> Path:
        return Path(self.spec.workspace_root) / workspace / repo

    def _write_run_files(self, ticket: str, workspace: str) -> None:
        ws_dir = Path(self.spec.workspace_root) / workspace
        meta = ws_dir / ".metawsm"
        meta.mkdir(parents=True, exist_ok=True)
        brief = store.brief(self.conn, self.run_id)
        brief_path = meta / "brief.md"
        if brief is not None:
            lines = [f"# Brief for {ticket} ({self.run_id})", "", f"## Goal\n{brief.goal}", "",
                     f"## Scope\n{brief.scope}", "", f"## Done criteria\n{brief.done_criteria}", "",
                     f"## Constraints\n{brief.constraints}", "", f"## Merge intent\n{brief.merge_intent}", ""]
            for qa in brief.qa:
                lines += [f"- Q: {qa.question}", f"  A: {qa.answer}"]
            brief_path.write_text("\n".join(lines) + "\n")
        mcp_agents = self._mcp_agents()
        for agent in self.spec.agents:
            prompt = meta / f"prompt-{agent.name}.md"
            if not prompt.exists():
                text = f"Agent {agent.name}: work on {ticket}. Brief: {brief_path if brief else 'none'}\n"
                prompt.write_text(text + (mcp_config.PROMPT if agent.name in mcp_agents else ""))
        run_file = {
            "run_id": self.run_id,
            "mode": self.spec.mode,
            "ticket": ticket,
            "tickets": self.spec.tickets,
            "workspace": workspace,
            "workspace_path": str(ws_dir),
            "repos": self.spec.repos,
            "agents": [a.name for a in self.spec.agents],
            "server": self.system.services.server_url,
            "brief_path": str(brief_path) if brief is not None else "",
        }
        (meta / "run.json").write_text(json.dumps(run_file, indent=2) + "\n")
        if mcp_agents:
            self._write_mcp_config(ticket, workspace, meta / "run.json")

    def _mcp_agents(self) -> set[str]:
        """The agents whose profile has ``mcp`` on (the default): they are told about the MCP tools."""
        profiles = {p.name: p for p in self.policy.agent_profiles}
        return {a.name for a in self.spec.agents if a.profile not in profiles or profiles[a.profile].mcp}

    def _write_mcp_config(self, ticket: str, workspace: str, run_file: Path) -> None:
        """``.mcp.json`` in each repository of the workspace, and in the workspace directory when
        that is the agents' working directory (several repos; see the planner's AgentSlot)."""
        services = self.system.services
        ws_dir = Path(self.spec.workspace_root) / workspace
        env = mcp_config.config_env(server_url=services.server_url, run_id=self.run_id, ticket=ticket,
                                    workspace=workspace, run_file=str(run_file))
        config = mcp_config.mcp_config(str(shim_dir(services.db.path) / SHIM_NAME), env)
        directories = [ws_dir / repo for repo in self.spec.repos] + ([ws_dir] if len(self.spec.repos) > 1 else [])
        for directory in directories:
            mcp_config.write_config(directory, config)


