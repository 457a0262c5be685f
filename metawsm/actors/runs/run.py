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
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from metawsm.actors.errors import ActorCrashed, ActorError, ActorTimeout, ActorUnavailable, Refusal
from metawsm.actors.managed import DEFERRED, ActorContext
from metawsm.actors.messages import Request
from metawsm.actors.runs.agent import AgentLaunch, TmuxAgent
from metawsm.actors.runs.messages import (
    AgentExited,
    AgentFailed,
    CloseRun,
    ControlChanged,
    Execute,
    KillSession,
    RestartAgent,
    ResumeRun,
    StartSession,
    StopRun,
)
from metawsm.actors.runs.refusals import provider_errors_refused
from metawsm.actors.supervisor import ChildInfo, ChildSpec, RestartType, Strategy, Supervisor
from metawsm.runs import store
from metawsm.runs.agent_env import AgentIdentity, agent_env, install_shim, shim_dir, with_agent_token
from metawsm.runs.gates import close_blockers
from metawsm.runs.model import LIVE, GateBlocked, RunError, RunGone, RunStateRefused, RunStatus, transition_allowed
from metawsm.runs.planner import STEP_AGENT, STEP_DOCS, STEP_RUN_FILE, STEP_VERIFY, STEP_WORKSPACE
from metawsm.runs.snapshot import control_rows
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


# The Run's mailbox, besides the SupervisorMessage it inherits (its agents' exit reports).
# Requests, from the RunSupervisor: StopRun, ResumeRun, RestartAgent and CloseRun, each answered
# with the run id once done (after the agents it waits for).  Tells: Execute (its own, carrying
# the CreateRun reply), ControlChanged (new control signals), AgentFailed and AgentExited (from
# its agents), and _AgentAnswered / _AgentsOverdue, which finish a command waiting for agents.
RunMessage = (
    StopRun | ResumeRun | RestartAgent | CloseRun | Execute | ControlChanged | AgentFailed | AgentExited
    | _AgentAnswered | _AgentsOverdue
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


class RunActor(Supervisor):
    kind: ClassVar[str] = "run"

    def __init__(self, ctx: ActorContext, run_id: str, start_reply: Any = None) -> None:
        super().__init__(ctx, Strategy.ONE_FOR_ONE, children=())
        self.run_id = run_id
        self._start_reply = start_reply
        self._last_status = ""
        self._operation: _Operation | None = None
        self._operations = 0

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
                case (StopRun() | ResumeRun() | RestartAgent() | CloseRun() | Execute() | ControlChanged()
                      | AgentFailed() | AgentExited()) if self._operation is not None:
                    return self.postpone(message)  # handled, in order, once the operation is done
                case Execute(reply=reply):
                    self._execute(reply)
                case ControlChanged() | AgentExited():
                    self._evaluate_control()
                case AgentFailed():
                    self._agent_failed(message)
                # A command git, tmux or the filesystem refuses is answered with their reason; it
                # never crashes the run (see refusals.py).
                case StopRun():
                    with provider_errors_refused():
                        return self._stop_run()
                case ResumeRun():
                    with provider_errors_refused():
                        return self._resume_run()
                case RestartAgent(agent=agent):
                    with provider_errors_refused():
                        return self._restart_agents(agent)
                case CloseRun(merge=merge):
                    with provider_errors_refused():
                        return self._close_run(merge)
                case _:
                    return super().handle(message)
            return None
        finally:
            if not self.actor_stopped.is_set():  # a postponed message replayed here may have crashed it
                self._status()  # keep the status describe() shows current

    # -- steps ----------------------------------------------------------------------------

    def _execute(self, reply: Any) -> None:
        try:
            if self._status() != S.PLANNING:
                store.transition(self.conn, self.run_id, S.PLANNING, "executing steps")
            retries = max(0, self.policy.execution.step_retries)
            for step in store.steps(self.conn, self.run_id):
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
                    store.transition(self.conn, self.run_id, S.FAILED, error=message)
                    return
                store.update_step(self.conn, self.run_id, step.ordinal, "done")
            store.transition(self.conn, self.run_id, S.RUNNING, "agents started")
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
            self.docs.seed(self._repo_path(workspace, home), source_repo(self.spec, self.policy, home), ticket,
                           self.spec.doc_seed_mode)
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

    def _start_sessions(self, rows: list[store.AgentRow], then: Callable[[], None]) -> Any:
        """A new session for each agent, watched, with a full restart budget; then ``then()``.

        An agent actor that is still there (e.g. one that spent its budget and stopped
        watching, in a failed run being resumed) is asked to start the session itself;
        starting the session behind its back would leave the new session unwatched.
        """
        operation = self._begin(StartSession(), then, strict=True)
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
                store.transition(self.conn, self.run_id, S.FAILED, error=reason)
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
            store.transition(self.conn, self.run_id, S.AWAITING_GUIDANCE,
                             f"guidance requested by {first.agent_name}: {first.question}")
            return
        if not pending and status == S.AWAITING_GUIDANCE:
            store.transition(self.conn, self.run_id, S.RUNNING, "guidance answered")
            status = S.RUNNING
        if self.spec.mode == "bootstrap" and status == S.RUNNING and self._all_done(controls):
            why = "every agent signalled completion and passed validation"
            store.transition(self.conn, self.run_id, S.COMPLETED, why)

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
            store.transition(self.conn, self.run_id, S.STOPPING, "stop requested")
        return self._kill_sessions(then=self._stopped)

    def _stopped(self) -> None:
        self._stop_agent_actors()
        store.transition(self.conn, self.run_id, S.STOPPED, "agents stopped")
        self._revoke_tokens()  # resume starts the agents again, each with a new token

    def _resume_run(self) -> Any:
        status = self._status()
        rows = store.agents(self.conn, self.run_id)
        self._require_workspaces(rows, "resumed")
        if status in LIVE:
            return self.run_id
        if status not in (S.STOPPED, S.PAUSED, S.FAILED):
            raise RunStateRefused(f"run {self.run_id} is {status}; only stopped, paused or failed runs can be resumed")
        if any(step.status != "done" for step in store.steps(self.conn, self.run_id)):
            store.reset_steps(self.conn, self.run_id)
            self._execute(None)
            return self.run_id
        return self._start_sessions(rows, then=self._resumed)

    def _resumed(self) -> None:
        store.transition(self.conn, self.run_id, S.RUNNING, "resumed")
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
        if any(step.status != "done" for step in store.steps(self.conn, self.run_id)):
            # Its workspaces or run files may not exist yet: resume runs the steps left.
            raise RunStateRefused(f"run {self.run_id} is {status} with steps not done; resume it instead of "
                                  "restarting its agents")

        def restarted() -> None:
            if status not in LIVE:
                store.transition(self.conn, self.run_id, S.RUNNING, "restarted")
            self._evaluate_control()

        return self._start_sessions(rows, then=restarted)

    def _close_run(self, merge: bool) -> Any:
        status = self._status()
        if status == S.CLOSED:
            return self.run_id
        if status == S.CLOSING:  # a close that did not finish (its gates had passed): finish it
            return self._kill_sessions(then=self._closed)
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
        store.transition(self.conn, self.run_id, S.CLOSING, "close gates passed")
        if merge:
            for workspace in self._workspace_names():
                for repo in self.spec.repos:
                    try:
                        self.workspaces.merge(workspace, repo, f"metawsm: merge {workspace} ({self.run_id})")
                    except Exception as error:  # noqa: BLE001 - any merge failure is reported and the run stays completed
                        # Nothing was closed: go back to completed so the user can fix it and retry.
                        store.transition(self.conn, self.run_id, S.COMPLETED,
                                         f"merge of {workspace}/{repo} failed: {error}")
                        raise RunError(f"merge of workspace {workspace} repo {repo} failed: {error}") from None
        return self._kill_sessions(then=self._closed)

    def _closed(self) -> None:
        self._stop_agent_actors()
        store.transition(self.conn, self.run_id, S.CLOSED, "closed")
        self._revoke_tokens()
        self.tell_self_stop()

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
            return self.run_id
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
                reply.resolve(self.run_id)
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
        for agent in self.spec.agents:
            prompt = meta / f"prompt-{agent.name}.md"
            if not prompt.exists():
                prompt.write_text(f"Agent {agent.name}: work on {ticket}. Brief: {brief_path if brief else 'none'}\n")
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


