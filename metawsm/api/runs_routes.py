"""Run routes.  Until runs are hosted by the daemon they answer 404 ``run_not_found``."""

from __future__ import annotations

from aiohttp import web

from metawsm.api.codec import json_response
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Route


async def list_runs(request: web.Request) -> web.Response:
    runs = context(request).runs
    if runs is None:
        return json_response({"runs": []})
    return await runs.list_runs(request)


async def _unknown(request: web.Request) -> web.Response:
    run_id = request.match_info.get("run_id", "")
    runs = context(request).runs
    if runs is None:
        raise ApiError(404, "run_not_found", f"run {run_id} not found")
    return await runs.dispatch(request)


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/runs", list_runs, "Run snapshots", "runs", responses={200: "application/json"}),
        Route("GET", "/api/v1/runs/{run_id}", _unknown, "One run", "runs", responses={404: ErrorResponse}),
        Route("GET", "/api/v1/runs/{run_id}/actors", _unknown, "The run's actor subtree", "runs",
              responses={404: ErrorResponse}),
    ]
