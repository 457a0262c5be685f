"""Building the aiohttp application: routes, error middleware, OpenAPI document."""

from __future__ import annotations

import logging
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from metawsm.actors import storage
from metawsm.actors.errors import ActorError, Refusal
from metawsm.api import (
    auth_routes,
    forum_routes,
    operator_routes,
    policy_routes,
    runs_routes,
    stream,
    system_routes,
    web_routes,
    workspace_routes,
)
from metawsm.api.auth import AUTH, AuthSettings, authenticate
from metawsm.api.codec import MAX_BODY_BYTES
from metawsm.api.context import CONTEXT, ApiContext
from metawsm.api.errors import ApiError, error_response
from metawsm.api.idempotency import KEYS, IdempotencyKeys, idempotent_writes
from metawsm.api.openapi import build_openapi
from metawsm.api.registry import RouteTable
from metawsm.api.security import EXPOSURE, Exposure, browser_guard, json_writes
from metawsm.api.system_routes import OPENAPI
from metawsm.mcp import http as mcp_http

log = logging.getLogger("metawsm.api")


def route_table() -> RouteTable:
    table = RouteTable()
    table.extend(system_routes.routes())
    table.extend(forum_routes.routes())
    table.extend(stream.routes())
    table.extend(runs_routes.routes())
    table.extend(policy_routes.routes())
    table.extend(operator_routes.routes())
    table.extend(auth_routes.routes())
    table.extend(web_routes.routes())
    table.extend(workspace_routes.routes())
    table.extend(mcp_http.routes())
    return table


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[CONTEXT].metrics
    try:
        return await handler(request)
    except ApiError as error:
        metrics.observe_error(error.status)
        return error_response(error.status, error.code, error.message)
    except Refusal as error:  # ForumError, RunError, ...: the caller's fault; the class says the status
        metrics.observe_error(error.status)
        return error_response(error.status, error.code, error.message)
    except ActorError as error:
        metrics.observe_error(503)
        return error_response(503, "unavailable", str(error))
    except web.HTTPRequestEntityTooLarge:
        metrics.observe_error(413)
        return error_response(413, "payload_too_large", f"request body is larger than {MAX_BODY_BYTES} bytes")
    except web.HTTPMethodNotAllowed as error:
        metrics.observe_error(405)
        allowed = ", ".join(sorted(error.allowed_methods))
        response = error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {allowed}")
        response.headers["Allow"] = ",".join(sorted(error.allowed_methods))
        return response
    except web.HTTPNotFound:
        metrics.observe_error(404)
        return error_response(404, "not_found", f"no route for {request.method} {request.path}")
    except web.HTTPException as error:
        if error.status < 400:
            raise
        metrics.observe_error(error.status)
        return error_response(error.status, error.reason.lower().replace(" ", "_"), error.text or error.reason)
    except Exception as error:
        status = getattr(request.app[CONTEXT].services, "storage", None)  # None in bare test apps
        fault = status.report(error) if status is not None else None
        if fault is not None:  # a direct write (a seen marker, say) met a full disk: 503 with the reason
            refusal = storage.unavailable(fault)
            metrics.observe_error(refusal.status)
            return error_response(refusal.status, refusal.code, refusal.message)
        request_id = uuid.uuid4().hex[:12]
        log.exception("internal error handling %s %s (request %s)", request.method, request.path, request_id)
        metrics.observe_error(500)
        return error_response(500, "internal_error", f"internal error (request id {request_id}); see the daemon log")


def build_app(ctx: ApiContext, exposure: Exposure, *, token_file: str = "") -> web.Application:
    """The API.  Middlewares run outermost first: every refusal (Host, Origin, token) gets the
    JSON error shape and is counted; the browser checks come before the token check, so they
    hold with and without tokens.  Keyed writes meet their ``Idempotency-Key`` last, once the
    caller is known and the body is JSON."""
    app = web.Application(client_max_size=MAX_BODY_BYTES,
                          middlewares=[errors_middleware, browser_guard, authenticate, json_writes,
                                       idempotent_writes])
    app[CONTEXT] = ctx
    keys = app[KEYS] = IdempotencyKeys(ctx.services.db, ctx.services.policy.forum.write_wait_ms / 1000.0)

    async def close_keys(_app: web.Application) -> None:
        keys.close()

    app.on_cleanup.append(close_keys)
    table = route_table()
    tokens = ctx.services.tokens if ctx.services.auth_enabled else None
    app[AUTH] = AuthSettings(tokens=tokens, token_file=token_file, access=table.access_by_handler())
    app[EXPOSURE] = exposure
    table.install(app)
    web_routes.install_assets(app)  # /ui/* files: not API, so not in the OpenAPI document
    mcp_http.install(app, ctx.services.server_url)  # /mcp's session manager, started on first use
    app[OPENAPI] = build_openapi(table)
    return app
