"""Run routes.  Until runs are hosted by the daemon no run exists: every run id answers 404
``run_not_found`` and starting a run answers 404 ``runs_unavailable`` with a sentence saying so
(never 405: the route exists, the feature does not yet)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from metawsm.api.codec import json_response, parse_query
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Route

RUN_ACTIONS = ("stop", "resume", "restart", "close", "cleanup")


class RunsQuery(msgspec.Struct, kw_only=True):
    ticket: str | None = None
    status: str | None = None


class RunsResponse(msgspec.Struct, kw_only=True):
    runs: list[dict[str, Any]]


async def list_runs(request: web.Request) -> web.Response:
    parse_query(request, RunsQuery)
    runs = context(request).runs
    if runs is None:
        return json_response(RunsResponse(runs=[]))
    return await runs.list_runs(request)


async def start_run(request: web.Request) -> web.Response:
    runs = context(request).runs
    if runs is None:
        raise ApiError(404, "runs_unavailable", "this daemon does not host runs yet; starting a run is not available")
    return await runs.dispatch(request)


async def _unknown(request: web.Request) -> web.Response:
    run_id = request.match_info.get("run_id", "")
    runs = context(request).runs
    if runs is None:
        raise ApiError(404, "run_not_found", f"run {run_id} not found")
    return await runs.dispatch(request)


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/runs", list_runs, "Run snapshots", "runs", query=RunsQuery,
              responses={200: RunsResponse}),
        Route("POST", "/api/v1/runs", start_run, "Start a run or a bootstrap (not hosted yet)", "runs",
              responses={404: ErrorResponse}),
        Route("GET", "/api/v1/runs/{run_id}", _unknown, "One run", "runs", responses={404: ErrorResponse}),
        Route("POST", "/api/v1/runs/{run_id}/{action:" + "|".join(RUN_ACTIONS) + "}", _unknown, "stop, resume, restart, close or cleanup a run",
              "runs", path_enums={"action": list(RUN_ACTIONS)}, responses={404: ErrorResponse}),
        Route("GET", "/api/v1/runs/{run_id}/actors", _unknown, "The run's actor subtree", "runs",
              responses={404: ErrorResponse}),
    ]
