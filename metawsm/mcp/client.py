"""The daemon's HTTP API and WebSocket stream, spoken as one agent (async, aiohttp).

Every refusal comes back as a :class:`DaemonError` carrying the daemon's own sentence (for
instance ``forum control validation status must be passed|failed``), which the MCP server hands
to the model as a tool error.  No retries: a tool call that failed can be repeated by the agent,
and a guidance request sent twice is better than one lost silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from metawsm.mcp.caller import TOKEN_VAR, Caller

AUTH_INFO_PATH = "/api/v1/auth"
STREAM_PATH = "/api/v1/forum/stream"
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60.0, connect=5.0)
USER_AGENT = "metawsm-mcp"


class DaemonError(Exception):
    """The daemon refused a request (``status`` and ``code`` from its error body) or could not be reached."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class DaemonApi:
    """One agent's view of the daemon.  Cheap to build: the HTTP session is shared and owned elsewhere."""

    def __init__(self, http: aiohttp.ClientSession, caller: Caller) -> None:
        self.http = http
        self.caller = caller
        self._token = caller.token

    # -- the credential ------------------------------------------------------------------------

    async def token(self) -> str:
        """The agent's token; without one, the daemon's token file, found as the CLI finds it."""
        if self._token is None:
            info = await self._request("GET", AUTH_INFO_PATH, authenticate=False)
            if info.get("auth") == "off":
                self._token = ""
            else:
                self._token = _read_token_file(str(info.get("token_file") or ""), self.caller.server)
        return self._token

    async def _headers(self, authenticate: bool) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        token = await self.token() if authenticate else ""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    # -- JSON requests --------------------------------------------------------------------------

    async def get(self, path: str, query: dict[str, str | int] | None = None) -> Any:
        return await self._request("GET", path, query=query)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._request("POST", path, body=body)

    async def _request(self, method: str, path: str, *, query: dict[str, str | int] | None = None,
                       body: dict[str, Any] | None = None, authenticate: bool = True) -> Any:
        headers = await self._headers(authenticate)
        url = self.caller.server + path
        try:
            async with self.http.request(method, url, params=query, json=body, headers=headers,
                                         timeout=REQUEST_TIMEOUT) as response:
                status, raw = response.status, await response.read()
        except aiohttp.ClientConnectorError as error:
            raise _unreachable(self.caller.server, error) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise DaemonError(f"no answer from metawsm serve at {self.caller.server} "
                              f"({type(error).__name__}: {error})") from None
        data = _decode(raw)
        if status >= 400:
            raise _refusal(status, data, raw)
        return data

    # -- the live event stream --------------------------------------------------------------------

    @asynccontextmanager
    async def stream(self, *, run_id: str, ticket: str, cursor: int) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """The forum stream after ``cursor`` (catch-up, then live), filtered to one run and ticket."""
        query = {"run_id": run_id, "ticket": ticket, "cursor": str(cursor), "limit": "1000"}
        headers = await self._headers(True)
        try:
            ws = await self.http.ws_connect(_ws_url(self.caller.server, STREAM_PATH), params=query,
                                            headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
        except aiohttp.WSServerHandshakeError as error:
            raise DaemonError(f"the forum stream refused the connection (HTTP {error.status}: {error.message})",
                              error.status) from None
        except aiohttp.ClientConnectorError as error:
            raise _unreachable(self.caller.server, error) from None
        try:
            yield ws
        finally:
            await ws.close()


def _unreachable(server: str, error: aiohttp.ClientConnectorError) -> DaemonError:
    reason = os.strerror(error.os_error.errno).lower() if error.os_error.errno else str(error.os_error)
    return DaemonError(f"cannot reach metawsm serve at {server} ({reason}); start it with: metawsm serve")


def _ws_url(server: str, path: str) -> str:
    parts = urlsplit(server)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + path, "", ""))


def _decode(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", errors="replace")}


def _refusal(status: int, data: Any, raw: bytes) -> DaemonError:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return DaemonError(str(error["message"]), status, str(error.get("code", "")))
    return DaemonError(f"metawsm serve answered HTTP {status}: {raw[:200].decode('utf-8', errors='replace')}",
                       status)


def _read_token_file(path: str, server: str) -> str:
    hint = f"set {TOKEN_VAR} to the agent's token"
    if not path:
        raise DaemonError(f"metawsm serve at {server} needs a token and keeps it outside a file; {hint}")
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as error:
        raise DaemonError(f"cannot read the token file {path} of metawsm serve at {server} "
                          f"({(error.strerror or str(error)).lower()}); {hint}") from None
    if not token:
        raise DaemonError(f"the token file {path} is empty; {hint}")
    return token
