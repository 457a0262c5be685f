"""Run routes: start (or plan) a run, list and read snapshots, act on a run, inspect its actors."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from aiohttp import web

from metawsm.actors.runs.messages import (
    CleanupRun,
    CloseRun,
    CommitRun,
    IterateRun,
    MergeRun,
    OpenPullRequests,
    RestartAgent,
    ResumeRun,
    RunCommand,
    StopRun,
    SyncReviews,
)
from metawsm.api.codec import json_response, parse_query, read_body
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.idempotency import claim_of
from metawsm.api.registry import Route
from metawsm.api.schemas import ActorsResponse, RunViewResponse, RunViewsResponse
from metawsm.runs.delivery import CommitReport, IterateReport, MergeReport
from metawsm.runs.forge import PrReport, ReviewSyncReport
from metawsm.runs.model import RunActionRequest, RunRequest, RunResponse, RunsResponse, RunStatus
from metawsm.runs.service import RunsService

# The URL's action -> the command it gives the run (options an action does not use are ignored).
RUN_ACTIONS: dict[str, Callable[[str, RunActionRequest], RunCommand]] = {
    "stop": lambda run_id, options: StopRun(run_id),
    "resume": lambda run_id, options: ResumeRun(run_id),
    "restart": lambda run_id, options: RestartAgent(run_id, agent=options.agent),
    "close": lambda run_id, options: CloseRun(run_id, merge=options.merge, dry_run=options.dry_run,
                                              changelog_entry=options.changelog_entry),
    "cleanup": lambda run_id, options: CleanupRun(run_id, keep_workspaces=options.keep_workspaces,
                                                  dry_run=options.dry_run),
    "commit": lambda run_id, options: CommitRun(run_id, message=options.message, dry_run=options.dry_run),
    "merge": lambda run_id, options: MergeRun(run_id, push=options.push, dry_run=options.dry_run),
    "iterate": lambda run_id, options: IterateRun(run_id, feedback=options.feedback, agent=options.agent,
                                                  dry_run=options.dry_run),
    "pr": lambda run_id, options: OpenPullRequests(run_id, title=options.title, body=options.body, draft=options.draft,
                                                   dry_run=options.dry_run),
    "review-sync": lambda run_id, options: SyncReviews(run_id, dispatch=options.dispatch),
}
STATUSES = [s.value for s in RunStatus]


class RunsQuery(msgspec.Struct, kw_only=True):
    ticket: str | None = None
    status: str | None = msgspec.field(default=None)


class CleanupSummary(msgspec.Struct, kw_only=True):
    run_id: str
    sessions: list[str]
    workspaces: list[str]
    kept_workspaces: bool
    dry_run: bool


class CleanupResponse(msgspec.Struct, kw_only=True):
    cleanup: CleanupSummary


class CommitResponse(msgspec.Struct, kw_only=True):
    commit: CommitReport


class MergeResponse(msgspec.Struct, kw_only=True):
    merge: MergeReport


class IterateResponse(msgspec.Struct, kw_only=True):
    iterate: IterateReport


class PrResponse(msgspec.Struct, kw_only=True):
    pr: PrReport


class ReviewSyncResponse(msgspec.Struct, kw_only=True):
    review_sync: ReviewSyncReport


def _runs(request: web.Request) -> RunsService:
    runs = context(request).runs
    if runs is None:
        raise ApiError(503, "unavailable", "runs are not available in this daemon")
    return runs


async def list_runs(request: web.Request) -> web.Response:
    query = parse_query(request, RunsQuery)
    if query.status and query.status not in STATUSES:
        raise ApiError(400, "invalid_filter", f'invalid status "{query.status}": must be one of {", ".join(STATUSES)}')
    snapshots = await _runs(request).list(query.ticket or None, query.status or None)
    return json_response(RunsResponse(runs=snapshots))


async def start_run(request: web.Request) -> web.Response:
    body = await read_body(request, RunRequest)
    snapshot = await _runs(request).create(body, claim_of(request))
    return json_response(RunResponse(run=snapshot))


async def get_run(request: web.Request) -> web.Response:
    snapshot = await _runs(request).snapshot(request.match_info["run_id"])
    return json_response(RunResponse(run=snapshot))


async def act(request: web.Request) -> web.Response:
    body = await read_body(request, RunActionRequest)
    command = RUN_ACTIONS[request.match_info["action"]](request.match_info["run_id"], body)
    result = await _runs(request).act(command)
    if isinstance(result, dict):
        return json_response(CleanupResponse(cleanup=CleanupSummary(**result)))
    if isinstance(result, CommitReport):
        return json_response(CommitResponse(commit=result))
    if isinstance(result, MergeReport):
        return json_response(MergeResponse(merge=result))
    if isinstance(result, IterateReport):
        return json_response(IterateResponse(iterate=result))
    if isinstance(result, PrReport):
        return json_response(PrResponse(pr=result))
    if isinstance(result, ReviewSyncReport):
        return json_response(ReviewSyncResponse(review_sync=result))
    return json_response(RunResponse(run=result))


async def run_actors(request: web.Request) -> web.Response:
    node = await _runs(request).actors(request.match_info["run_id"])
    return json_response(ActorsResponse(actors=node))


def routes() -> list[Route]:
    errors = {400: ErrorResponse, 404: ErrorResponse, 409: ErrorResponse, 503: ErrorResponse}
    return [
        Route("GET", "/api/v1/runs", list_runs, "Run snapshots, newest first", "runs", query=RunsQuery,
              responses={200: RunViewsResponse, 400: ErrorResponse}),
        Route("POST", "/api/v1/runs", start_run, "Start a run or a bootstrap (or plan it with dry_run)", "runs",
              body=RunRequest, responses={200: RunViewResponse, **errors}),
        Route("GET", "/api/v1/runs/{run_id}", get_run, "One run", "runs",
              responses={200: RunViewResponse, 404: ErrorResponse}),
        Route("POST", "/api/v1/runs/{run_id}/{action:" + "|".join(RUN_ACTIONS) + "}", act,
              "stop, resume, restart, close, cleanup, commit, merge, iterate, pr or review-sync a run",
              "runs",
              body=RunActionRequest,
              path_enums={"action": list(RUN_ACTIONS)},
              # 410: the run's workspaces are gone (cleaned up) for an action that needs them.
              responses={200: RunViewResponse | CleanupResponse | CommitResponse | MergeResponse | IterateResponse
                         | PrResponse | ReviewSyncResponse, **errors, 410: ErrorResponse}),
        Route("GET", "/api/v1/runs/{run_id}/actors", run_actors, "The run's actor subtree", "runs",
              responses={200: ActorsResponse, 404: ErrorResponse}),
    ]
