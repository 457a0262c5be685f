"""Runs as the HTTP layer sees them: create, read, act, inspect (reads never ask actors)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from metawsm.actors.node import ActorNode
from metawsm.actors.runs.messages import (
    RUNS,
    CommitRun,
    CreateRun,
    MergeRun,
    OpenPullRequests,
    RunCommand,
    SyncReviews,
    run_path,
)
from metawsm.actors.system import ActorSystem
from metawsm.idempotency_keys import KeyClaim
from metawsm.runs import store
from metawsm.runs.model import RunError, RunNotFound, RunRequest, RunSnapshot
from metawsm.runs.snapshot import build_snapshot
from metawsm.services import Services

T = TypeVar("T")
CREATE_TIMEOUT = 300.0
ACTION_TIMEOUT = 120.0
DELIVERY_TIMEOUT = 3600.0  # commit runs the policy's test commands (each may take up to 30 minutes)


class RunsService:
    def __init__(self, system: ActorSystem, services: Services) -> None:
        self.system = system
        self.services = services
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="runs-read")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _read(self, query: Callable[[Any], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.services.db.connect()
        return query(conn)

    async def read(self, query: Callable[[Any], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._read, query)

    def _snapshot(self, conn: Any, run_id: str, details: bool = False) -> RunSnapshot:
        # Restarts left count against the budget of the policy the run was planned with.
        budget = store.load_run(conn, run_id).spec.policy_or(self.services.policy).operator.restart_budget
        return build_snapshot(conn, run_id, budget, details=details)

    async def snapshot(self, run_id: str) -> RunSnapshot:
        """One run, with what git says of its workspaces (diffs) and the next command."""
        return await self.read(lambda conn: self._snapshot(conn, run_id, details=True))

    async def list(self, ticket: str | None = None, status: str | None = None) -> list[RunSnapshot]:
        def query(conn: Any) -> list[RunSnapshot]:
            return [self._snapshot(conn, run_id) for run_id in store.list_run_ids(conn, ticket, status)]

        return await self.read(query)

    async def create(self, request: RunRequest, idempotency: KeyClaim | None = None) -> RunSnapshot:
        result = await self.system.ask_async(RUNS, CreateRun(request, idempotency), timeout=CREATE_TIMEOUT)
        if isinstance(result, RunSnapshot):
            return result  # a dry run: the plan, nothing stored
        return await self.snapshot(result)

    async def act(self, command: RunCommand) -> Any:
        """Give a run a command; the run's snapshot once it is done, or the command's own answer
        (the cleanup summary, a commit or merge report)."""
        run_id = command.run_id
        await self.read(lambda conn: store.load_run(conn, run_id))  # 404 before anything else
        slow = CommitRun | MergeRun | OpenPullRequests | SyncReviews
        timeout = DELIVERY_TIMEOUT if isinstance(command, slow) else ACTION_TIMEOUT
        result = await self.system.ask_async(RUNS, command, timeout=timeout)
        if not isinstance(result, str):
            return result  # cleanup summary, commit or merge report
        return await self.snapshot(run_id)

    async def actors(self, run_id: str) -> ActorNode:
        run = await self.read(lambda conn: store.load_run(conn, run_id))
        node = self.system.inspect().find(run_path(run_id))
        if node is not None:
            return node
        return ActorNode(name=f"Run[{run_id}]", path=run_path(run_id), kind="run", state="stopped",
                         details={"run_id": run_id, "status": run.status})


__all__ = ["RunError", "RunNotFound", "RunsService"]
