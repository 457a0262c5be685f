"""The web UI: ``GET /`` (the page) and ``GET /ui/<file>`` (its ES modules and stylesheet).

The files live in the package (``metawsm/web/``, shipped as package data) and are served as
they are: there is no front-end build step at install or start time.  ``/`` is part of the
route table (and so of the OpenAPI document, as before); the ``/ui/`` asset route is not API and
is installed next to the table by :func:`install_assets`, so the document keeps listing only
the routes of api.md.

Every response carries a Content-Security-Policy that only allows this daemon as a source
(scripts, styles, fetch and the WebSocket): the UI makes no external network request, and the
browser refuses one if a change ever tried.
"""

from __future__ import annotations

import re
from importlib import resources
from importlib.abc import Traversable

from aiohttp import web

from metawsm.api.auth import AUTH, SESSION_COOKIE
from metawsm.api.errors import ApiError
from metawsm.api.registry import Access, Route

ASSET_PREFIX = "/ui/"
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}


def web_root() -> Traversable:
    return resources.files("metawsm").joinpath("web")


def _headers(request: web.Request, content_type: str) -> dict[str, str]:
    host = request.host
    return {
        "Content-Type": content_type,
        # Always revalidate: after an upgrade and restart the browser must not mix old and new modules.
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'"
        ),
    }


def _read(name: str) -> bytes:
    if not _NAME.match(name) or ".." in name:
        raise ApiError(404, "not_found", f"no UI file {name!r}")
    suffix = name[name.rfind("."):] if "." in name else ""
    if suffix not in CONTENT_TYPES:
        raise ApiError(404, "not_found", f"no UI file {name!r}")
    entry = web_root().joinpath(name)
    if not entry.is_file():
        raise ApiError(404, "not_found", f"no UI file {name!r}")
    return entry.read_bytes()


async def index(request: web.Request) -> web.Response:
    if "token" in request.query:
        return _login(request, request.query["token"])
    body = _read("index.html")
    return web.Response(body=body, headers=_headers(request, CONTENT_TYPES[".html"]))


def _login(request: web.Request, token: str) -> web.Response:
    """The login link (``/?token=…``): trade the operator token for the UI session, then send
    the browser to ``/`` so the token leaves the address bar (and the history entry).

    The session is the cookie plus the page key, which travels in the redirect's fragment: a
    fragment never goes to a server, and the page moves it into its own origin's storage at once
    (``web/session.js``)."""
    tokens = request.app[AUTH].tokens
    if tokens is None:  # --no-auth: nothing to log in to
        return web.Response(status=303, headers={"Location": "/"})
    who = tokens.identify(token.strip())
    if who is None or who.is_agent:
        raise ApiError(401, "unauthorized", "this login link is not valid (the token was rotated?); "
                                            "run `metawsm ui` for a new one")
    response = web.Response(status=303, headers={"Location": f"/#login={tokens.page_key}",
                                                 "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    # HttpOnly: page scripts never see it; SameSite=Strict: no other site's page can make the
    # browser send it; Path=/: the API and the WebSocket get it too.
    response.set_cookie(SESSION_COOKIE, tokens.session_cookie, httponly=True, samesite="Strict", path="/")
    return response


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = _read(name)
    return web.Response(body=body, headers=_headers(request, CONTENT_TYPES[name[name.rfind("."):]]))


def routes() -> list[Route]:
    return [Route("GET", "/", index, "Web UI (with ?token=…: log in and set the session cookie)", "system",
                  responses={200: "text/html", 303: "text/plain"}, access=Access.PUBLIC)]


def install_assets(app: web.Application) -> None:
    """``GET /ui/{name}``: the UI's static files (kept out of the OpenAPI document: not API)."""
    app.router.add_get(ASSET_PREFIX + "{name}", asset, allow_head=True)
