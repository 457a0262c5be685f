"""``metawsm forum watch``: follow ``/api/v1/forum/stream`` and survive daemon restarts.

The follower remembers the last ``next_cursor`` the server sent (events frames and heartbeats
both carry it) and the highest sequence it printed.  When the connection drops — the daemon
restarts, or closes a slow client with 1013 — it prints one ``reconnecting…`` line on stderr,
retries with a capped exponential backoff and reconnects with ``cursor=<last next_cursor>``.
The server replays everything after that cursor before going live, and anything at or below
the highest printed sequence is skipped, so no event is lost or printed twice.

Only the very first connection fails fast (daemon unreachable → exit 1, like every forum
command); a 4xx on the handshake (a bad filter) exits 2 with the server's message, and so
does a 5xx on the first handshake (exit 1).  Later handshake failures are retried.  Ctrl-C
(SIGINT) or SIGTERM ends the follower cleanly with exit 0.

aiohttp is imported here, and only here, so the other commands start fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from metawsm.cli.client import (
    CONNECT_TIMEOUT,
    ApiFailure,
    ClientError,
    DaemonClient,
    DaemonUnreachable,
    ServerAddress,
)
from metawsm.cli.output import event_line
from metawsm.cli.stopping import until_signalled

STREAM_PATH = "/api/v1/forum/stream"
HANDSHAKE_TIMEOUT = 5.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
CLIENT_PING_SECONDS = 30.0  # detects a silently dead peer (the server also pings every 20 s)


class _Lost(Exception):
    """The connection ended (or could not be made); reconnect."""


class Follower:
    def __init__(self, server: str, ticket: str | None, run_id: str | None, cursor: int | None, as_json: bool) -> None:
        self.server = server
        self.address = ServerAddress.parse(server)
        self.ticket = ticket
        self.run_id = run_id
        self.resume: int | None = cursor  # the cursor to reconnect with (None: the server's "now")
        self.last_printed = cursor if cursor is not None else 0
        self.as_json = as_json
        self.connected_once = False
        self.out = sys.stdout
        self.client = DaemonClient(server)  # made here, inside the click command, so it sees --token
        self._headers: dict[str, str] | None = None

    def query(self) -> dict[str, Any]:
        return {"ticket": self.ticket, "run_id": self.run_id, "cursor": self.resume}

    def url(self) -> str:
        return self.address.ws_url(STREAM_PATH, self.query())

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            backoff = BACKOFF_FIRST
            announced = False
            while True:
                healthy = False
                try:
                    healthy = await self._session(session)
                except _Lost:
                    pass
                if healthy:
                    backoff, announced = BACKOFF_FIRST, False
                if not announced:
                    print("reconnecting…", file=sys.stderr, flush=True)
                    announced = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self, session: aiohttp.ClientSession) -> bool:
        """One connection; returns True when it delivered at least one frame."""
        if self._headers is None:
            try:
                self._headers = self.client.auth_headers()  # once: a blocking round trip at most
            except DaemonUnreachable as error:
                self._unreachable_first(error.reason)
                raise _Lost from None
        try:
            ws = await asyncio.wait_for(
                session.ws_connect(self.url(), headers=self._headers, heartbeat=CLIENT_PING_SECONDS, autoping=True,
                                   max_msg_size=0,
                                   timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)),
                HANDSHAKE_TIMEOUT,
            )
        except aiohttp.WSServerHandshakeError as error:
            if 400 <= error.status < 500 or not self.connected_once:
                raise self._handshake_refusal(error.status) from None
            raise _Lost from None  # e.g. 503 while the restarted daemon gets ready: retry
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            self._unreachable_first(_reason(error))
            raise _Lost from None
        self.connected_once = True
        got_frame = False
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    self._frame(json.loads(message.data))
                    got_frame = True
                elif message.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE,
                                      aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    break
        except (TimeoutError, aiohttp.ClientError, ConnectionError, ValueError):
            pass
        finally:
            await ws.close()
        return got_frame

    def _unreachable_first(self, reason: str) -> None:
        if not self.connected_once:
            raise DaemonUnreachable(self.address.display, reason)

    def _handshake_refusal(self, status: int) -> ClientError:
        """aiohttp hides the error body; ask again without the upgrade to get the server's message."""
        try:
            self.client.get(STREAM_PATH, self.query())
        except ApiFailure as error:
            if error.code != "websocket_required":  # the query was fine: keep the handshake's status
                return error
        except ClientError as error:
            return error
        return ApiFailure(status, "", f"the stream refused the connection (HTTP {status})")

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "forum.events":
            for event in frame.get("events") or []:
                sequence = int(event.get("sequence", 0))
                if sequence <= self.last_printed:
                    continue  # already printed before a reconnect
                self.last_printed = sequence
                if self.as_json:
                    line = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
                else:
                    line = event_line(event)
                self.out.write(line + "\n")
            self.out.flush()
        elif kind == "error":
            print(f"error: stream: {frame.get('message', '')}", file=sys.stderr, flush=True)
        cursor = frame.get("next_cursor")
        if isinstance(cursor, int):
            self.resume = cursor if self.resume is None else max(self.resume, cursor)


def _reason(error: BaseException) -> str:
    cause = getattr(error, "os_error", None) or error.__cause__ or error
    if isinstance(cause, ConnectionRefusedError) or "Connect call failed" in str(error):
        return "connection refused"
    if isinstance(error, asyncio.TimeoutError) or isinstance(cause, TimeoutError):
        return "connection timed out"
    return str(cause) or type(cause).__name__


async def _main(follower: Follower) -> int:
    await until_signalled(follower.run())
    return 0


def watch_stream(server: str, ticket: str | None = None, run_id: str | None = None, cursor: int | None = None,
                 as_json: bool = False) -> int:
    """Follow the stream until SIGINT/SIGTERM; returns the exit code (ClientError propagates)."""
    follower = Follower(server, ticket, run_id, cursor, as_json)
    try:
        return asyncio.run(_main(follower))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were installed
        return 0
