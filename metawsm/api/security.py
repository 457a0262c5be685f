"""The browser boundary: Host, Origin, Sec-Fetch-Site, Content-Type and CORS checks.

A daemon on 127.0.0.1 is reachable by every web page the user opens.  Tokens stop a page that
does not know one; these checks stop the rest, and hold with and without tokens:

* **Host** must be one of the daemon's own names (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT``, the address it is bound to, ``api.allowed_hosts``).  A DNS-rebinding page
  talks to us under *its* host name, so it is refused here.
* **Origin**, when a browser sends one, must be the daemon's own origin or listed in
  ``api.allowed_origins`` — for writes, reads and the WebSocket handshake alike.
* **Sec-Fetch-Site: cross-site** on an API path is refused: a page's ``<img>``/``<script>``
  requests carry no Origin header, but modern browsers do send this one.
* **Writes need ``Content-Type: application/json``** (415 otherwise).  A cross-site
  ``fetch`` in ``no-cors`` mode can only send ``text/plain`` and form types, so this alone stops
  the "simple request" writes that never trigger a CORS preflight.
* **CORS** headers go only to origins named in ``api.allowed_origins``; everyone else gets none
  (so the browser hides our responses from them).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from metawsm.api.errors import ApiError

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
API_PREFIX = "/api/"
CORS_MAX_AGE = "600"


def is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in LOOPBACK_HOSTS or host.startswith("127.")


@dataclass(frozen=True)
class Exposure:
    """Which names and origins this daemon answers to; built once when ``serve`` starts."""

    hosts: frozenset[str]  # lowercased Host header values: "name:port" (and bare "name" on port 80)
    cors_origins: frozenset[str]  # origins named in api.allowed_origins: they get CORS headers

    @classmethod
    def build(cls, bound_host: str, port: int, allowed_hosts: list[str] = [],  # noqa: B006 - never mutated
              allowed_origins: list[str] = []) -> Exposure:  # noqa: B006 - never mutated
        names = set(LOOPBACK_NAMES)
        bound = bound_host.lower()
        if bound not in ("0.0.0.0", "::", ""):  # a wildcard bind has no name of its own: use allowed_hosts
            names.add(f"[{bound}]" if ":" in bound else bound)
        hosts: set[str] = set()
        for name in names:
            hosts.add(f"{name}:{port}")
            if port == 80:
                hosts.add(name)
        for entry in allowed_hosts:
            entry = entry.strip().lower()
            if entry:
                hosts.add(entry if _has_port(entry) else f"{entry}:{port}")
        origins = frozenset(origin.strip().rstrip("/").lower() for origin in allowed_origins if origin.strip())
        return cls(frozenset(hosts), origins)

    def allows_origin(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        return origin in (f"http://{host}", f"https://{host}") or origin in self.cors_origins


def _has_port(entry: str) -> bool:
    if entry.startswith("["):
        return "]:" in entry
    return ":" in entry


EXPOSURE: web.AppKey[Exposure] = web.AppKey("metawsm_exposure", Exposure)


@web.middleware
async def browser_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    exposure = request.app[EXPOSURE]
    host = request.headers.get("Host", "").strip().lower()
    if host and host not in exposure.hosts:
        raise ApiError(403, "forbidden_host",
                       f"Host {host!r} is not one of this daemon's names; add it to api.allowed_hosts to allow it")
    origin = request.headers.get("Origin")
    if origin is not None and not exposure.allows_origin(origin, host):
        raise ApiError(403, "forbidden_origin",
                       f"requests from origin {origin!r} are refused; add it to api.allowed_origins to allow it")
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site" and request.path.startswith(API_PREFIX):
        raise ApiError(403, "forbidden_origin", "cross-site requests to the API are refused")
    cors = origin.rstrip("/").lower() if origin is not None else ""
    if request.method == "OPTIONS" and cors in exposure.cors_origins:
        return _preflight(request, cors)
    response = await handler(request)
    if cors in exposure.cors_origins and not response.prepared:
        response.headers["Access-Control-Allow-Origin"] = origin or ""
        response.headers["Vary"] = "Origin"
    return response


@web.middleware
async def json_writes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Writes must say ``Content-Type: application/json``; runs after the token check, so a
    caller without a token learns that first (401), and after routing, so 404/405 stay what they are."""
    routed = request.match_info.http_exception is None
    if routed and request.method in WRITE_METHODS and request.content_type != "application/json":
        shown = request.headers.get("Content-Type", "")
        raise ApiError(415, "unsupported_media_type",
                       f"writes need Content-Type: application/json (got {shown!r})" if shown
                       else "writes need Content-Type: application/json")
    return await handler(request)


def _preflight(request: web.Request, origin: str) -> web.Response:
    return web.Response(status=204, headers={
        "Access-Control-Allow-Origin": request.headers.get("Origin", origin),
        "Access-Control-Allow-Methods": "GET, HEAD, POST",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": CORS_MAX_AGE,
        "Vary": "Origin",
    })
