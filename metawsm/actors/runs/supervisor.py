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

from metawsm import idempotency_keys
from metawsm.actors.errors import ActorUnavailable
from metawsm.actors.managed import DEFERRED, ActorContext
from metawsm.actors.messages import Request
from metawsm.actors.runs.messages import (
    CleanupRun,
    CloseRun,
    CommitRun,
    ControlChanged,
    CreateRun,
    IterateRun,
    MergeRun,
    OpenPullRequests,
    RestartAgent,
    ResumeRun,
    StopRun,
    SyncReviews,
    run_path,
)
from metawsm.actors.runs.refusals import provider_errors_refused
from metawsm.actors.runs.run import RunActor
from metawsm.actors.supervisor import ChildSpec, RestartType, Strategy, Supervisor
from metawsm.clock import now_text
from metawsm.policy import Policy, PolicyError
from metawsm.runs import store
from metawsm.runs.cleanup import cleanup_run
from metawsm.runs.confinement import check_run_request
from metawsm.runs.model import RunError, RunStateRefused, RunStatus
from metawsm.runs.planner import plan_run
from metawsm.runs.snapshot import plan_snapshot
from metawsm.runs.wiring import workspace_provider_for
from metawsm.store import write_transaction

log = logging.getLogger("metawsm.runs")

# The RunSupervisor's mailbox, besides the SupervisorMessage it inherits.  Requests: CreateRun
# -> the run id once its agents started (or it failed), or the plan snapshot for a dry run;
# StopRun, ResumeRun, RestartAgent, CloseRun -> forwarded to the run's actor, which answers the
# run id; CommitRun, MergeRun, IterateRun, OpenPullRequests and SyncReviews -> forwarded, answered
# with the CommitReport, MergeReport, IterateReport, PrReport or ReviewSyncReport; CleanupRun ->
# the cleanup summary (a dict).  Tell: ControlChanged, forwarded to the run.
RunSupervisorMessage = (
    CreateRun | StopRun | ResumeRun | RestartAgent | CloseRun | CommitRun | MergeRun | IterateRun | OpenPullRequests
    | SyncReviews | CleanupRun | ControlChanged
)


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
                self.start_child(run_spec(run_id))
            except Exception as error:  # noqa: BLE001 - one bad run must not keep the others down
                log.error("could not bring back run %s: %s", run_id, error)

    def teardown(self) -> None:
        super().teardown()
        self.conn.close()

    def handle(self, message: Any) -> Any:
        match message:
            case CreateRun():
                with provider_errors_refused():
                    return self._create(message)
            case CleanupRun():
                with provider_errors_refused():
                    return self._cleanup(message)
            case CloseRun():
                with provider_errors_refused():
                    return self._route(message, closed_answer=True)  # closing a closed run is a no-op
            case (StopRun() | ResumeRun() | RestartAgent() | CommitRun() | MergeRun() | IterateRun()
                  | OpenPullRequests() | SyncReviews()):
                with provider_errors_refused():
                    return self._route(message)
            case ControlChanged(run_id=run_id):
                self.system.tell(run_path(run_id), message)
                return None
            case _:
                return super().handle(message)

    def _create(self, message: CreateRun) -> Any:
        claim = message.idempotency
        if claim is not None and not message.request.dry_run:
            known = idempotency_keys.lookup(self.conn, claim)  # another request's key: refused (409)
            if known is not None:
                return idempotency_keys.recorded_run(claim, known)  # the run this key started; nothing new
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
            if claim is not None:  # with the run, so a retry after a crash finds it
                idempotency_keys.record(self.conn, claim, now_text(), run_id=plan.spec.run_id)
        reply = self.defer_reply()
        self.start_child(run_spec(plan.spec.run_id, reply))
        return DEFERRED

    def _policy_for_new_run(self) -> Policy:
        try:
            return self.system.services.policy_for_new_run()
        except PolicyError as error:
            # The file was edited into something invalid: this run is refused (HTTP 400) with the
            # policy's own one-line message, and the daemon keeps the policy it had.
            raise RunError(str(error), code="invalid_policy") from None

    def _cleanup(self, command: CleanupRun) -> dict[str, Any]:
        run = store.load_run(self.conn, command.run_id)
        if run.status not in (RunStatus.CLOSED, RunStatus.STOPPED, RunStatus.FAILED, RunStatus.COMPLETED):
            raise RunStateRefused(f"run {run.run_id} is {run.status}; stop or close it before cleanup",
                                  code="run_busy")
        if not command.dry_run:  # a dry run only reports: the run's actor keeps watching its agents
            self.remove_child(run.run_id)
        return cleanup_run(self.conn, run, services=self.system.services, keep_workspaces=command.keep_workspaces,
                           dry_run=command.dry_run)

    def _route(self, command: StopRun | ResumeRun | RestartAgent | CloseRun | CommitRun | MergeRun | IterateRun
               | OpenPullRequests | SyncReviews,
               closed_answer: bool = False) -> Any:
        """Hand the command to the run's actor (started if there is none); it answers."""
        run = store.load_run(self.conn, command.run_id)
        if run.status == RunStatus.CLOSED:
            if closed_answer:
                return run.run_id
            raise RunStateRefused(f"run {run.run_id} is closed; it cannot be {_DONE_TO[type(command)]}")
        if self.child(run.run_id) is None:
            self.start_child(run_spec(run.run_id))
        reply = self.defer_reply()
        if not self.tell_child(run.run_id, Request(body=command, reply=reply)):
            # Its actor is waiting out a restart backoff (or could not start): answer 503 now.
            # Starting another one under the same id would be refused as a conflict.
            reply.fail(ActorUnavailable(run_path(run.run_id), "restarting"))
        return DEFERRED


# What a refusal says cannot be done to a closed run.
_DONE_TO: dict[type, str] = {StopRun: "stopped", ResumeRun: "resumed", RestartAgent: "restarted", CloseRun: "closed",
                             CommitRun: "committed", MergeRun: "merged", IterateRun: "iterated",
                             OpenPullRequests: "pushed", SyncReviews: "synced"}
