"""Who calls, and what they may do: the token check and the agent's confinement to itself.

:func:`authenticate` (a middleware) finds the caller's :class:`Identity` from
``Authorization: Bearer <token>`` or the UI's session cookie and enforces the route's
:class:`Access` rule from the route table.  Handlers that agents may call then use
:func:`speak_as` / :func:`confine_*` to record an agent's write as that agent and to keep it
inside its own run.

Refusals never echo a token: messages name the identity ("agent "a" of run r (T-1)"), not the
credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from metawsm.api.errors import ApiError
from metawsm.api.registry import Access, Handler
from metawsm.auth.tokens import OPERATOR, Identity, TokenRegistry

SESSION_COOKIE = "metawsm_session"
PAGE_KEY_HEADER = "X-Metawsm-Page-Key"
# Browsers cannot set headers on a WebSocket handshake: the page offers its key as a subprotocol.
PAGE_KEY_PROTOCOL = "metawsm.key."
ASSET_PREFIX = "/ui/"
AGENT_SIGNALS = ("guidance_request", "completion", "validation")

T = TypeVar("T")


@dataclass
class AuthSettings:
    """``tokens`` is None when serve runs with ``--no-auth`` (loopback only): everyone is the operator."""

    tokens: TokenRegistry | None
    token_file: str  # where the operator token lives ("" when it came from METAWSM_TOKEN)
    access: dict[Handler, Access]

    @property
    def enabled(self) -> bool:
        return self.tokens is not None


AUTH: web.AppKey[AuthSettings] = web.AppKey("metawsm_auth", AuthSettings)
IDENTITY = "metawsm_identity"


def identity(request: web.Request) -> Identity:
    return request.get(IDENTITY, OPERATOR)


def _route_access(request: web.Request, settings: AuthSettings) -> Access:
    handler = request.match_info.handler
    access = settings.access.get(handler)
    if access is not None:
        return access
    if request.method in ("GET", "HEAD") and request.path.startswith(ASSET_PREFIX):
        return Access.PUBLIC  # the UI's own script and style files
    return Access.OPERATOR  # unknown routes (404s) and anything not in the table


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _unauthorized(settings: AuthSettings, what: str) -> ApiError:
    where = f" (the operator token is in {settings.token_file})" if settings.token_file else ""
    return ApiError(401, "unauthorized", f"{what}: send Authorization: Bearer <token>{where}")


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[AUTH]
    access = _route_access(request, settings)
    if access is Access.PUBLIC:
        return await handler(request)
    if settings.tokens is None:
        request[IDENTITY] = OPERATOR
        return await handler(request)
    token = _bearer(request)
    if token is not None:
        who = settings.tokens.identify(token)
        if who is None:
            raise _unauthorized(settings, "invalid or revoked token")
    else:
        who = settings.tokens.identify_session(request.cookies.get(SESSION_COOKIE, ""), page_key(request))
        if who is None:
            raise _unauthorized(settings, "this route needs a token")
    if who.is_agent and access is Access.OPERATOR:
        raise ApiError(403, "forbidden", f"{who.describe()} may not do this: {request.method} {request.path} "
                                         "needs the operator token")
    request[IDENTITY] = who
    return await handler(request)


def page_key(request: web.Request) -> str:
    """The UI's page key: a header on requests, a subprotocol on the WebSocket handshake."""
    key = request.headers.get(PAGE_KEY_HEADER, "")
    if key:
        return key.strip()
    return page_key_protocol(request)[len(PAGE_KEY_PROTOCOL):]


def page_key_protocol(request: web.Request) -> str:
    """The ``metawsm.key.…`` subprotocol the handshake offers ("" when none): the stream must
    select it, or the browser drops the connection."""
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(PAGE_KEY_PROTOCOL):
            return offered
    return ""


# -- agents act only for themselves ---------------------------------------------------------------


def forbidden(who: Identity, what: str) -> ApiError:
    return ApiError(403, "forbidden", f"{who.describe()} may not {what}")


def speak_as(request: web.Request, body: T) -> T:
    """Record an agent's write as the agent: its actor fields are filled in, a claim to be
    someone else is refused.  Operator writes pass unchanged (they may set actor_type)."""
    who = identity(request)
    if not who.is_agent:
        return body
    claimed_type = getattr(body, "actor_type", None)
    claimed_name = getattr(body, "actor_name", "")
    if claimed_type not in (None, "", "agent"):
        raise forbidden(who, f"write as actor_type {claimed_type!r}")
    if claimed_name not in ("", who.agent):
        raise forbidden(who, f"write as actor_name {claimed_name!r}")
    return msgspec.structs.replace(body, actor_type="agent", actor_name=who.agent)  # type: ignore[type-var]  # every body here has actor_type and actor_name


def confine_to_run(request: web.Request, *, run_id: str, ticket: str, agent_name: str | None = None) -> None:
    """An agent may name only its own run, ticket and (when given) agent name."""
    who = identity(request)
    if not who.is_agent:
        return
    if run_id not in ("", who.run_id):
        raise forbidden(who, f"act in run {run_id!r}")
    if ticket != who.ticket:
        raise forbidden(who, f"act on ticket {ticket!r}")
    if agent_name not in (None, "", who.agent):
        raise forbidden(who, f"act as agent {agent_name!r}")


def confine_signal(request: web.Request, signal_type: Any) -> None:
    who = identity(request)
    if who.is_agent and signal_type not in AGENT_SIGNALS:
        raise forbidden(who, f"send a {signal_type!r} signal (agents send {', '.join(AGENT_SIGNALS)})")


def confine_viewer(request: web.Request, viewer_type: str, viewer_id: str) -> None:
    who = identity(request)
    if who.is_agent and (viewer_type != "agent" or viewer_id != who.agent):
        raise forbidden(who, f"mark threads seen for {viewer_type} {viewer_id!r}")
