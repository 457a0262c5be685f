"""Run[<run_id>]: one run's lifecycle; supervises its TmuxAgent children (one_for_one).

The run's durable state is in SQLite (status with compare-and-set transitions, steps,
agents), so a restarted Run actor — or a restarted daemon — resumes where it was: steps
not done yet are executed, live agents are re-attached, signals are re-evaluated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from metawsm.actors.managed import ActorContext
from metawsm.actors.runs.agent import AgentLaunch, TmuxAgent
from metawsm.actors.runs.messages import (
    AgentExited,
    AgentFailed,
    ControlChanged,
    Execute,
    KillSession,
    RunCommand,
    StartSession,
)
from metawsm.actors.supervisor import ChildSpec, RestartType, Strategy, Supervisor
from metawsm.runs import store
from metawsm.runs.agent_env import AgentIdentity, agent_env, install_shim, shim_dir, with_agent_token
from metawsm.runs.gates import close_blockers
from metawsm.runs.model import LIVE, GateBlocked, RunError, RunStatus
from metawsm.runs.planner import STEP_AGENT, STEP_DOCS, STEP_RUN_FILE, STEP_VERIFY, STEP_WORKSPACE
from metawsm.runs.wiring import docs_provider_for, source_repo, workspace_provider_for
from metawsm.runs.snapshot import control_rows
from metawsm.runs.tmux import Tmux

log = logging.getLogger("metawsm.runs")

S = RunStatus


class RunActor(Supervisor):
    kind: ClassVar[str] = "run"

    def __init__(self, ctx: ActorContext, run_id: str, start_reply: Any = None) -> None:
        super().__init__(ctx, Strategy.ONE_FOR_ONE, children=())
        self.run_id = run_id
        self._start_reply = start_reply
        self._last_status = ""

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
            return self._handle(message)
        finally:
            self._status()  # keep the status describe() shows current

    def _handle(self, message: Any) -> Any:
        if isinstance(message, Execute):
            self._execute(message.reply)
            return None
        if isinstance(message, ControlChanged):
            self._evaluate_control()
            return None
        if isinstance(message, AgentFailed):
            self._agent_failed(message)
            return None
        if isinstance(message, AgentExited):
            self._evaluate_control()
            return None
        if isinstance(message, RunCommand):
            return self._command(message)
        return super().handle(message)

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
        row = next(r for r in store.agents(self.conn, self.run_id) if r.agent_name == agent_name and r.workspace == workspace)
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
        if self._slot(child_id) is not None:
            return
        probe = self._progress_probe(workspace)
        spec = ChildSpec.of(TmuxAgent, launch, probe, fresh, id=child_id, name=f"TmuxAgent[{child_id}]",
                            restart=RestartType.TRANSIENT)
        self._start_child(spec)

    def _start_fresh(self, row: store.AgentRow) -> None:
        """A new session for the agent, watched, with a full restart budget.

        An agent actor that is still there (e.g. one that spent its budget and stopped
        watching, in a failed run being resumed) is told to start the session itself;
        starting the session behind its back would leave the new session unwatched.
        """
        child = self._slot(self._child_id(row.agent_name, row.workspace))
        if child is not None and child.ref is not None and child.ref.is_alive():
            self.system.ask(child.path, StartSession(), timeout=15.0)
        else:
            self._start_agent(row.agent_name, row.workspace, fresh=True)

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

    def _agent_slots(self) -> list[Any]:
        return [slot for slot in list(self._slots)]

    def _ask_agents(self, message: Any, only: str = "") -> None:
        for slot in self._agent_slots():
            if only and slot.spec.id != only and not slot.spec.id.startswith(only + "@"):
                continue
            if slot.ref is not None and slot.ref.is_alive():
                try:
                    self.system.ask(slot.path, message, timeout=15.0)
                except Exception as error:  # noqa: BLE001
                    log.warning("run %s: %s failed for %s: %s", self.run_id, type(message).__name__, slot.path, error)

    def _stop_agent_actors(self) -> None:
        for slot in self._agent_slots():
            self._remove_child(slot.spec.id)

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
            store.transition(self.conn, self.run_id, S.COMPLETED, "every agent signalled completion and passed validation")

    def _all_done(self, controls: dict[str, Any]) -> bool:
        names = {a.name for a in self.spec.agents}
        return bool(names) and all(
            n in controls and controls[n].completed and controls[n].validation_status == "passed" for n in names
        )

    # -- commands -------------------------------------------------------------------------

    def _command(self, command: RunCommand) -> str:
        action, options = command.action, command.options
        status = self._status()
        if action == "stop":
            if status in (S.STOPPED,):
                return self.run_id
            store.transition(self.conn, self.run_id, S.STOPPING, "stop requested")
            self._ask_agents(KillSession())
            self._stop_agent_actors()
            store.transition(self.conn, self.run_id, S.STOPPED, "agents stopped")
            self._revoke_tokens()  # resume starts the agents again, each with a new token
        elif action == "resume":
            if status in LIVE:
                return self.run_id
            if status not in (S.STOPPED, S.PAUSED, S.FAILED):
                raise RunError(f"run {self.run_id} is {status}; only stopped, paused or failed runs can be resumed")
            if any(step.status != "done" for step in store.steps(self.conn, self.run_id)):
                store.reset_steps(self.conn, self.run_id)
                self._execute(None)
            else:
                for row in store.agents(self.conn, self.run_id):
                    self._start_fresh(row)
                store.transition(self.conn, self.run_id, S.RUNNING, "resumed")
                self._evaluate_control()
        elif action == "restart":
            if status in (S.CLOSING, S.CLOSED, S.STOPPING):
                raise RunError(f"run {self.run_id} is {status}; it cannot be restarted")
            only = options.agent.strip()
            rows = [r for r in store.agents(self.conn, self.run_id) if not only or r.agent_name == only]
            if only and not rows:
                raise RunError(f'run {self.run_id} has no agent "{only}"')
            for row in rows:
                self._start_fresh(row)
            if status not in LIVE:
                store.transition(self.conn, self.run_id, S.RUNNING, "restarted")
            self._evaluate_control()
        elif action == "close":
            self._close(options.merge)
        else:
            raise RunError(f'unknown action "{action}"')
        return self.run_id

    def _close(self, merge: bool) -> None:
        status = self._status()
        if status == S.CLOSED:
            return
        # A run awaiting guidance is checked too, so `close` names the gate that blocks it
        # ("... has N pending forum guidance request(s); close blocked") instead of its status.
        if status not in (S.COMPLETED, S.RUNNING, S.STOPPED, S.FAILED, S.AWAITING_GUIDANCE):
            raise RunError(f"run {self.run_id} is {status}; it can be closed once completed, stopped or failed")
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
                    except Exception as error:  # noqa: BLE001
                        # Nothing was closed: go back to completed so the user can fix it and retry.
                        store.transition(self.conn, self.run_id, S.COMPLETED,
                                         f"merge of {workspace}/{repo} failed: {error}")
                        raise RunError(f"merge of workspace {workspace} repo {repo} failed: {error}") from None
        self._ask_agents(KillSession())
        self._stop_agent_actors()
        store.transition(self.conn, self.run_id, S.CLOSED, "closed")
        self._revoke_tokens()
        self.tell_self_stop()

    def tell_self_stop(self) -> None:
        try:
            self.actor_ref.stop(block=False)
        except Exception:  # noqa: BLE001
            pass

    def _dirty_files(self, workspace: str, repo: str) -> list[str]:
        path = Path(self.spec.workspace_root) / workspace / repo
        if not path.exists():
            return []
        return self.workspaces.dirty_files(workspace, repo)

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


