"""Serving one aiohttp request with an ASGI application (the MCP SDK's transport is ASGI).

The daemon is aiohttp; the SDK's streamable HTTP transport is an ASGI callable.  For the one
route that needs it, :func:`serve_asgi` turns the aiohttp request into an ASGI ``scope``, a
``receive`` that hands over the (already read, size-limited) body, and a ``send`` that writes to
an aiohttp ``StreamResponse``, flushed as the application sends it, so server-sent event streams
reach the client as they are written.

``receive`` after the body waits until the exchange is over: the SDK's event streams call it to
learn of a disconnect, and a client that went away is noticed when the next write to it fails
(the streams send keep-alive comments every 15 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

log = logging.getLogger("metawsm.api")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Scope = MutableMapping[str, Any]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def asgi_scope(request: web.Request, *, state: dict[str, Any], extra: dict[str, Any]) -> Scope:
    """The HTTP connection scope of ``request`` (ASGI 3.0); ``state`` and ``extra`` reach the app."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    local = transport.get_extra_info("sockname") if transport is not None else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.partition("?")[0].encode("latin-1"),
        "root_path": "",
        "query_string": request.query_string.encode("latin-1"),
        "headers": [(name.lower(), value) for name, value in request.raw_headers],
        "client": tuple(peer[:2]) if isinstance(peer, tuple) else None,
        "server": tuple(local[:2]) if isinstance(local, tuple) else None,
        "state": state,
        **extra,
    }


class _Exchange:
    """The ``receive`` and ``send`` of one request, and the response they build."""

    def __init__(self, request: web.Request, body: bytes) -> None:
        self.request = request
        self.body: bytes | None = body
        self.response: web.StreamResponse | None = None
        self.finished = False
        self.over = asyncio.get_running_loop().create_future()  # resolved when the exchange ends

    async def receive(self) -> Message:
        if self.body is not None:
            body, self.body = self.body, None
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.shield(self.over)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.response is not None:
                raise RuntimeError("the ASGI application started its response twice")
            response = web.StreamResponse(status=int(message["status"]))
            for name, value in message.get("headers", ()):
                response.headers.add(bytes(name).decode("latin-1"), bytes(value).decode("latin-1"))
            self.response = response
            await self._guarded(response.prepare(self.request))
        elif kind == "http.response.body":
            if self.response is None:
                raise RuntimeError("the ASGI application sent a body before starting its response")
            body = bytes(message.get("body", b""))
            if body:
                await self._guarded(self.response.write(body))
            if not message.get("more_body", False) and not self.finished:
                self.finished = True
                try:
                    await self.response.write_eof()
                except ConnectionError:
                    pass  # an event-stream client may hang up once it read what it waited for
                self.end()

    async def _guarded(self, write: Awaitable[Any]) -> None:
        """A write to a client that left ends the exchange (``receive`` then reports the disconnect)."""
        try:
            await write
        except ConnectionError:
            self.end()
            raise

    def end(self) -> None:
        if not self.over.done():
            self.over.set_result(None)


async def serve_asgi(request: web.Request, app: AsgiApp, *, state: dict[str, Any],
                     extra: dict[str, Any] | None = None) -> web.StreamResponse:
    """Answer ``request`` with ``app``; the body is read first, within the daemon's body limit (1 MiB)."""
    exchange = _Exchange(request, await request.read())
    try:
        await app(asgi_scope(request, state=state, extra=extra or {}), exchange.receive, exchange.send)
    except ConnectionError:
        if exchange.response is None:
            raise
        log.debug("client left %s %s before the answer was complete", request.method, request.path)
    except Exception:
        if exchange.response is None:
            raise  # nothing sent yet: the error middleware answers with the JSON error shape
        # The status line is out: the client gets a truncated answer, the log the reason.
        log.exception("the ASGI application failed while answering %s %s", request.method, request.path)
    finally:
        exchange.end()
    if exchange.response is None:
        raise RuntimeError(f"the ASGI application sent no response to {request.method} {request.path}")
    return exchange.response
