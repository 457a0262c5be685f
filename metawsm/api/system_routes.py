"""Health, actor inspection, fault injection, metrics, OpenAPI and the index page."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from aiohttp import web

from metawsm.actors.errors import ActorUnavailable
from metawsm.api.codec import json_response
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.health import assess
from metawsm.api.registry import Access, Route
from metawsm.api.schemas import (
    ActorsResponse,
    ActorSummary,
    BusHealth,
    CrashResponse,
    HealthResponse,
    ProjectionLag,
    WorkerHealth,
)
from metawsm.clock import now_text
from metawsm.policy import redacted_redis_url


async def health(request: web.Request) -> web.Response:
    ctx = context(request)
    system, services = ctx.system, ctx.services
    now = now_text()
    if system.failed.is_set():
        reason = system.failure.message if system.failure else "the root supervisor gave up"
        body = HealthResponse(status="failed", started_at=system.started_at, now=now, reason=reason)
        return json_response(body, status=503)
    try:
        outbox, lag = await ctx.forum.read_async(lambda r: (r.outbox_stats(), r.projection_lag()))
    except Exception as error:  # noqa: BLE001 - the database cannot be read: that is "failed"
        body = HealthResponse(status="failed", started_at=system.started_at, now=now,
                              reason=f"database unavailable: {error}")
        return json_response(body, status=503)
    bus = services.bus
    stream_pending: int | None = None
    describe = ctx.extra.get("stream_pending")
    if describe is not None and bus.healthy:
        try:
            stream_pending = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(None, describe), timeout=1.0
            )
        except Exception:  # noqa: BLE001 - reported as unknown (null)
            stream_pending = None
    summary = ActorSummary(**system.summary())
    fault = services.storage.fault
    verdict = assess(system.inspect(), bus.healthy, bus.error, fault.reason if fault is not None else "")
    body = HealthResponse(
        status=verdict.status,
        started_at=system.started_at,
        now=now,
        reason=verdict.reason,
        recovering=verdict.recovering,
        worker=WorkerHealth(
            running=bus.consumer_running,
            last_processed_at=bus.last_processed_at,
            total_processed=bus.total_processed,
            consecutive_errors=bus.consecutive_errors,
            last_error=bus.last_error,
            lag=ProjectionLag(
                outbox_pending=outbox.pending_count,
                oldest_pending_age_seconds=outbox.oldest_pending_age_seconds,
                stream_pending=stream_pending,
                projection_lag=lag,
            ),
        ),
        outbox=outbox,
        forum_bus=BusHealth(healthy=bus.healthy, error=bus.error, redis_url=redacted_redis_url(services.redis_url),
                            redis_mode=bus.redis_mode, redis_reason=bus.redis_reason),
        actors=summary,
    )
    ctx.metrics.set_health_gauges(outbox.pending_count, lag)
    return json_response(body)


async def actors(request: web.Request) -> web.Response:
    return json_response(ActorsResponse(actors=context(request).system.inspect()))


async def crash_actor(request: web.Request) -> web.Response:
    ctx = context(request)
    if not ctx.fault_injection:
        raise ApiError(404, "not_found",
                       "fault injection is disabled; start serve with --debug or set debug.fault_injection")
    path = request.match_info["path"].strip("/")
    reason = request.query.get("reason", "injected fault")
    try:
        ctx.system.crash(path, reason)
    except ActorUnavailable as error:
        raise ApiError(404, "actor_not_found", str(error)) from None
    return json_response(CrashResponse(crashed=path, reason=reason))


async def metrics(request: web.Request) -> web.Response:
    ctx = context(request)
    try:
        outbox, lag = await ctx.forum.read_async(lambda r: (r.outbox_stats(), r.projection_lag()))
        ctx.metrics.set_health_gauges(outbox.pending_count, lag)
    except Exception:  # noqa: BLE001 - serve what we have
        pass
    text = ctx.metrics.render(ctx)
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_TEXT,
                                                     "X-Content-Type-Options": "nosniff"})


async def openapi(request: web.Request) -> web.Response:
    document = request.app[OPENAPI]
    return web.Response(body=document, content_type="application/json")


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"  # the exposition format's own media type
OPENAPI: web.AppKey[bytes] = web.AppKey("metawsm_openapi", bytes)


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/health", health, "Liveness and pipeline health", "system",
              responses={200: HealthResponse, 503: HealthResponse}, access=Access.PUBLIC),
        Route("GET", "/api/v1/debug/actors", actors, "The whole actor tree", "debug",
              responses={200: ActorsResponse}, access=Access.OPERATOR),
        Route("POST", "/api/v1/debug/actors/{path:.+}/crash", crash_actor,
              "Fault injection: crash an actor (only with serve --debug)", "debug",
              responses={200: CrashResponse, 404: ErrorResponse}),
        Route("GET", "/api/v1/openapi.json", openapi, "This document", "system", responses={200: "application/json"}),
        Route("GET", "/metrics", metrics, "Prometheus metrics", "system", responses={200: "text/plain"},
              access=Access.OPERATOR),
    ]


def as_json(value: Any) -> bytes:
    return msgspec.json.encode(value)
