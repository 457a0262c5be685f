"""The operator's decisions (docs/operator.md)."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from metawsm.api.codec import json_response, parse_query
from metawsm.api.context import context
from metawsm.api.errors import ErrorResponse
from metawsm.api.registry import Access, Route
from metawsm.api.schemas import OperatorDecision, OperatorDecisionsQuery, OperatorDecisionsResponse
from metawsm.services import Services
from metawsm.store import schema_operator


def _decisions(services: Services, run_id: str | None) -> list[OperatorDecision]:
    conn = services.db.connect(read_only=True)
    try:
        rows = schema_operator.decisions(conn, run_id)
    finally:
        conn.close()
    return [msgspec.convert(row, OperatorDecision, strict=False) for row in rows]


async def list_decisions(request: web.Request) -> web.Response:
    query = parse_query(request, OperatorDecisionsQuery)
    services = context(request).services
    decisions = await asyncio.get_running_loop().run_in_executor(None, _decisions, services, query.run_id or None)
    return json_response(OperatorDecisionsResponse(decisions=decisions))


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/operator/decisions", list_decisions, "The operator's decisions, oldest first",
              "operator", query=OperatorDecisionsQuery,
              responses={200: OperatorDecisionsResponse, 400: ErrorResponse}, access=Access.OPERATOR),
    ]
