"""RunSupervisor: creates runs, routes commands and control-signal news to their Run actors.

On start it brings back a Run actor for every run that is not closed, so a daemon restart
re-attaches to live agents.  Run actors are ``transient``: a closed run stops its actor for
good, a crashed one is restarted and resumes from SQLite.

Each new run is planned with the policy file as it is at that moment (re-read when it changed)
and keeps that policy in its spec; an invalid file refuses the run and changes nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from metawsm.actors.managed import DEFERRED, ActorContext
from metawsm.actors.messages import Request
from metawsm.actors.runs.messages import ACTIONS, ControlChanged, CreateRun, RunCommand, run_path
from metawsm.actors.runs.run import RunActor
from metawsm.actors.supervisor import ChildSpec, RestartType, Strategy, Supervisor
from metawsm.policy import Policy, PolicyError
from metawsm.runs import store
from metawsm.runs.cleanup import cleanup_run
from metawsm.runs.confinement import check_run_request
from metawsm.runs.model import RunError, RunStatus
from metawsm.runs.planner import plan_run
from metawsm.runs.snapshot import plan_snapshot
from metawsm.runs.providers.docs import DocsError
from metawsm.runs.providers.workspace import WorkspaceError
from metawsm.runs.tmux import TmuxError
from metawsm.runs.wiring import workspace_provider_for
from metawsm.store import write_transaction

PROVIDER_ERRORS = (WorkspaceError, DocsError, TmuxError, OSError)

log = logging.getLogger("metawsm.runs")


def run_spec(run_id: str, reply: Any = None) -> ChildSpec:
    return ChildSpec.of(RunActor, run_id, reply, id=run_id, name=f"Run[{run_id}]", restart=RestartType.TRANSIENT,
                        shutdown_timeout=20.0)


class RunSupervisor(Supervisor):
    kind: ClassVar[str] = "supervisor"

    def __init__(self, ctx: ActorContext) -> None:
        super().__init__(ctx, Strategy.ONE_FOR_ONE, children=())

    def setup(self) -> None:
        super().setup()
        self.conn = self.system.services.db.connect()
        for run_id in store.non_terminal_run_ids(self.conn):
            try:
                self._start_child(run_spec(run_id))
            except Exception as error:  # noqa: BLE001 - one bad run must not keep the others down
                log.error("could not bring back run %s: %s", run_id, error)

    def teardown(self) -> None:
        super().teardown()
        self.conn.close()

    def handle(self, message: Any) -> Any:
        if isinstance(message, (CreateRun, RunCommand)):
            try:
                return self._create(message) if isinstance(message, CreateRun) else self._route(message)
            except PROVIDER_ERRORS as error:
                # Git, tmux or the filesystem refused: the request fails, the supervisor stays up.
                raise RunError(str(error) or type(error).__name__) from None
        if isinstance(message, ControlChanged):
            self.system.tell(run_path(message.run_id), message)
            return None
        return super().handle(message)

    def _create(self, message: CreateRun) -> Any:
        services = self.system.services
        policy = self._policy_for_new_run()
        check_run_request(message.request, policy, Path(services.base_dir))
        plan = plan_run(message.request, policy, policy_path=services.policy_path,
                        server_url=services.server_url, base_dir=Path(services.base_dir), db_path=services.db.path)
        # Resolve every repo now, so a typo fails the request instead of a step later.
        workspace_provider_for(plan.spec, policy).plan(plan.slots[0].workspace, plan.spec.repos)
        if plan.spec.dry_run:
            return plan_snapshot(plan)
        with write_transaction(self.conn):
            store.insert_run(
                self.conn,
                plan.spec,
                plan.steps,
                [(s.agent, s.workspace, s.session, s.workspace_path) for s in plan.slots],
                plan.brief,
            )
        reply = self.defer_reply()
        self._start_child(run_spec(plan.spec.run_id, reply))
        return DEFERRED

    def _policy_for_new_run(self) -> Policy:
        try:
            return self.system.services.policy_for_new_run()
        except PolicyError as error:
            # The file was edited into something invalid: this run is refused (HTTP 400) with the
            # policy's own one-line message, and the daemon keeps the policy it had.
            raise RunError(str(error), code="invalid_policy") from None

    def _route(self, command: RunCommand) -> Any:
        if command.action not in ACTIONS:
            raise RunError(f'unknown run action "{command.action}": must be one of {", ".join(ACTIONS)}')
        run = store.load_run(self.conn, command.run_id)
        if command.action == "cleanup":
            if run.status not in (RunStatus.CLOSED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.COMPLETED):
                raise RunError(
                    f"run {run.run_id} is {run.status}; stop or close it before cleanup", code="run_busy"
                )
            slot = self._slot(run.run_id)
            if slot is not None:
                self._remove_child(run.run_id)
            return cleanup_run(self.conn, run, services=self.system.services, keep_workspaces=command.options.keep_workspaces,
                               dry_run=command.options.dry_run)
        if run.status == RunStatus.CLOSED:
            if command.action == "close":
                return run.run_id
            raise RunError(f"run {run.run_id} is closed")
        slot = self._slot(run.run_id)
        if slot is None or slot.ref is None or not slot.ref.is_alive():
            self._start_child(run_spec(run.run_id))
            slot = self._slot(run.run_id)
        reply = self.defer_reply()
        slot.ref.tell(Request(body=command, reply=reply))  # type: ignore[union-attr]
        return DEFERRED
