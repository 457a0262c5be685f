"""The live forum stream: ``GET /api/v1/forum/stream`` (WebSocket).

:class:`StreamHub` is an event sink on the event loop.  The ``thread_views`` projection's
commits reach it (through the EventBroker) in sequence order; the hub encodes each event
once and offers it to every client.  It keeps a high-water mark of what it dispatched and
fills any hole from SQLite, so a dropped notification can never become a gap.

A client first gets every matching event after its cursor from SQLite (catch-up, up to the
hub's high-water mark at the moment it registered), then the live events buffered since —
those at or below the catch-up end are skipped — so there is no gap and no duplicate.
Each client has a bounded frame queue and its own sender task (frames are written straight
to the socket while it keeps up, and queued for the sender only when it does not; a frame
is encoded once per dispatch for every client with the same filters): a client that falls
more than ``MAX_FRAMES_BEHIND`` frames behind is closed with 1013 and nobody else waits for it.
So is one whose socket has not taken a frame for ``STALLED_SEND_SECONDS`` while events keep
coming: at a low event rate the protocol ping timeout (20 s + 10 s) would otherwise cut a
stalled reader first, abnormally (1006), before it is a thousand frames behind.  The
transport's write buffer and aiohttp's back-pressure check are capped too
(``WRITE_BUFFER_HIGH``), so a stalled socket blocks its sender after the kernel buffers plus
~32 KiB, instead of after the 256 KiB more that aiohttp would buffer by default.
The kernel send buffer of each stream socket is capped (``SEND_BUFFER_BYTES``) so that a
stalled peer is noticed after about a thousand frames, not after megabytes of autotuned
buffer.  The 1013 close frame is queued after the frames already written, so a client that
resumes reading gets everything it was sent and then the close code; one that never reads
again is cut off ``SLOW_CLOSE_GRACE_SECONDS`` later.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import Any

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from metawsm.api.auth import page_key_protocol
from metawsm.api.codec import parse_query
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Route
from metawsm.api.schemas import StreamQuery
from metawsm.clock import now_text
from metawsm.forum.messages import EventMessage
from metawsm.forum.views import EventView
from metawsm.operator.model import Decision

log = logging.getLogger("metawsm.api")

MAX_FRAMES_BEHIND = 1000
FILL_CHECK_SECONDS = 1.0
# With no client connected, a missed notification harms nobody until one connects (and its
# catch-up reads SQLite anyway): the hub checks the checkpoint this rarely meanwhile.
FILL_CHECK_IDLE_SECONDS = 30.0
PROTOCOL_PING_SECONDS = 20.0
SEND_BUFFER_BYTES = 64 * 1024
CLOSE_TIMEOUT_SECONDS = 2.0
SLOW_CLOSE_GRACE_SECONDS = 10.0
STALLED_SEND_SECONDS = 5.0
WRITE_BUFFER_HIGH = 16 * 1024
_encoder = msgspec.json.Encoder()


class _Encoded(msgspec.Struct, frozen=True, array_like=True):
    sequence: int
    ticket: str
    run_id: str
    data: bytes


def _encode_view(view: EventView) -> _Encoded:
    env = view.envelope
    return _Encoded(view.sequence, env.ticket, env.run_id, _encoder.encode(view))


def _events_frame(events: list[bytes], next_cursor: int, sent_at: bytes | None = None) -> bytes:
    return b"".join(
        (b'{"type":"forum.events","events":[', b",".join(events), b'],"next_cursor":',
         str(next_cursor).encode(), b',"sent_at":"', sent_at or now_text().encode(), b'"}')
    )


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 header of an unmasked, final, uncompressed text frame (what a server sends)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 65536:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def _heartbeat_frame(next_cursor: int) -> bytes:
    return b'{"type":"heartbeat","next_cursor":%d,"sent_at":"%s"}' % (next_cursor, now_text().encode())


class StreamClient:
    """One connection's state.

    Frames normally go straight to the socket from :meth:`push` (one ``transport.write`` on
    the loop: no task switch per frame, which is what makes fan-out to a thousand clients
    cheap).  Only when the socket is behind (its write buffer over ``WRITE_BUFFER_HIGH``), a
    frame is already queued, or the sender task is busy do frames wait in ``frames`` for the
    sender, which honours back-pressure; order is kept because a frame is only written
    directly when nothing is queued or being sent.
    """

    def __init__(self, ws: web.WebSocketResponse, ticket: str | None, run_id: str | None, limit: int) -> None:
        self.ws = ws
        self.ticket = ticket
        self.run_id = run_id
        self.limit = limit
        self.frames: deque[bytes] = deque()
        self.wakeup = asyncio.Event()
        self.live = False
        self.buffered: list[list[_Encoded]] = []
        self.cursor = 0  # everything up to here was sent or does not match
        self.overflowed = False
        self.transport: Any = None
        self.sending_since = 0.0  # loop time the current send started (0: not sending)
        self.sender_running = False  # direct writes only once the sender owns the ordering
        self.last_frame_at = 0.0  # loop time of the last frame handed to the socket
        self.frames_pushed = 0

    def matches(self, item: _Encoded) -> bool:
        return (self.ticket is None or item.ticket == self.ticket) and (
            self.run_id is None or item.run_id == self.run_id
        )

    def offer(self, batch: list[_Encoded], shared: dict[Any, list[tuple[bytes, bytes]]] | None = None,
              sent_at: bytes | None = None, now: float = 0.0) -> bool:
        """Send or queue what matches; False when the client is too far behind.

        ``shared`` caches the frames of one dispatch by (filters, limit): every client that
        had seen nothing of the batch gets the very same bytes.
        """
        if not self.live:
            self.buffered.append(batch)
            return len(self.buffered) <= MAX_FRAMES_BEHIND
        if batch[0].sequence > self.cursor:
            fresh = batch
            key = (self.ticket, self.run_id, self.limit)
        else:
            fresh = [item for item in batch if item.sequence > self.cursor]
            if not fresh:
                return True
            key = None
        self.cursor = fresh[-1].sequence
        frames = shared.get(key) if shared is not None and key is not None else None
        if frames is None:
            frames = [(frame, _text_frame_header(len(frame)) + frame) for frame in self._frames(fresh, sent_at)]
            if shared is not None and key is not None:
                shared[key] = frames
        for frame, wire in frames:
            self.push(frame, wire, now)
        return len(self.frames) <= MAX_FRAMES_BEHIND

    def _frames(self, fresh: list[_Encoded], sent_at: bytes | None) -> list[bytes]:
        matching = [item for item in fresh if self.matches(item)]
        frames = []
        for start in range(0, len(matching), self.limit):
            chunk = matching[start:start + self.limit]
            # next_cursor promises "everything up to here was sent": a frame that is not the
            # batch's last covers only up to its own last event; the last one also covers the
            # non-matching events after it.
            final = start + self.limit >= len(matching)
            frames.append(_events_frame([item.data for item in chunk],
                                        self.cursor if final else chunk[-1].sequence, sent_at))
        return frames

    def push(self, frame: bytes, wire: bytes | None = None, now: float = 0.0) -> None:
        """Write ``frame`` now if nothing is ahead of it, else queue it for the sender.

        ``wire`` is the frame with its header (shared by all clients of a dispatch).
        """
        self.frames_pushed += 1
        transport = self.transport
        if (self.sender_running and not self.frames and not self.sending_since and transport is not None
                and not self.ws.closed and not transport.is_closing()
                and transport.get_write_buffer_size() < WRITE_BUFFER_HIGH):
            transport.write(wire if wire is not None else _text_frame_header(len(frame)) + frame)
            self.last_frame_at = now or asyncio.get_running_loop().time()
            return
        self.frames.append(frame)
        self.wakeup.set()

    def go_live(self, caught_up_to: int) -> bool:
        self.cursor = max(self.cursor, caught_up_to)
        self.live = True
        pending, self.buffered = self.buffered, []
        ok = True
        for batch in pending:
            ok = self.offer(batch) and ok
        return ok


class StreamHub:
    """Fans committed events out to WebSocket clients (lives on the event loop)."""

    def __init__(self, forum: Any, loop: asyncio.AbstractEventLoop, heartbeat_seconds: float) -> None:
        self.forum = forum
        self.loop = loop
        self.heartbeat_seconds = heartbeat_seconds
        self.clients: set[StreamClient] = set()
        self.last_sequence = 0
        self.frames_total = 0
        self.slow_closed_total = 0
        self._inbox: deque[list[EventMessage]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self.last_sequence = await self.forum.read_async(lambda r: r.projection_checkpoints().get("thread_views", 0))
        self._task = asyncio.create_task(self._dispatch_loop(), name="stream-hub")
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="stream-heartbeats")

    async def stop(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        if self._heartbeats is not None:
            self._heartbeats.cancel()
        clients, self.clients = list(self.clients), set()
        await asyncio.gather(
            *(_close(c.ws, WSCloseCode.GOING_AWAY, b"server shutting down", c.transport) for c in clients)
        )

    def client_count(self) -> int:
        return len(self.clients)

    # EventSink (called on the broker's thread)
    def events_applied(self, projection: str, events: list[EventMessage]) -> None:
        if projection == "thread_views" and events:
            try:
                self.loop.call_soon_threadsafe(self._enqueue, events)
            except RuntimeError:
                pass  # the loop is closed: shutting down

    def commands_decided(self, outcomes: list[Any]) -> None:
        pass

    # DecisionListener (called on the operator's thread)
    def decision_made(self, decision: Decision) -> None:
        frame = _encoder.encode({"type": "operator.decision", "decision": decision})
        try:
            self.loop.call_soon_threadsafe(self._dispatch_decision, decision.run_id, decision.tickets, frame)
        except RuntimeError:
            pass  # the loop is closed: shutting down

    def _dispatch_decision(self, run_id: str, tickets: list[str], frame: bytes) -> None:
        """Live clients whose filters match get the frame; one catching up reads decisions from the API."""
        for client in list(self.clients):
            if not client.live or client.overflowed:
                continue
            wanted_run = client.run_id is None or client.run_id == run_id
            if wanted_run and (client.ticket is None or client.ticket in tickets):
                client.push(frame)

    def _enqueue(self, events: list[EventMessage]) -> None:
        self._inbox.append(events)
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        while not self._closing:
            try:
                check = FILL_CHECK_SECONDS if self.clients else FILL_CHECK_IDLE_SECONDS
                await asyncio.wait_for(self._wake.wait(), check)
            except TimeoutError:
                await self._fill_to_checkpoint()
                continue
            self._wake.clear()
            while self._inbox:
                events = [e for e in self._inbox.popleft() if e.sequence > self.last_sequence]
                if not events:
                    continue
                if events[0].sequence > self.last_sequence + 1:
                    await self._fill(events[0].sequence - 1)
                    events = [e for e in events if e.sequence > self.last_sequence]
                if events:
                    self._dispatch([_encode_view(EventView.from_message(e)) for e in events])

    async def _fill_to_checkpoint(self) -> None:
        try:
            checkpoint = await self.forum.read_async(lambda r: r.projection_checkpoints().get("thread_views", 0))
        except Exception:  # noqa: BLE001 - try again on the next tick
            return
        if checkpoint > self.last_sequence:
            await self._fill(checkpoint)

    async def _fill(self, up_to: int) -> None:
        """Dispatch events (last_sequence, up_to] read from SQLite (a missed notification)."""
        while self.last_sequence < up_to:
            after = self.last_sequence
            views, _ = await self.forum.read_async(lambda r, after=after: r.events_after(None, None, after, 1000))
            views = [v for v in views if v.sequence <= up_to]
            if not views:
                return
            self._dispatch([_encode_view(v) for v in views])

    def _dispatch(self, batch: list[_Encoded]) -> None:
        self.last_sequence = batch[-1].sequence
        stalled_before = self.loop.time() - STALLED_SEND_SECONDS
        shared: dict[Any, list[tuple[bytes, bytes]]] = {}
        sent_at = now_text().encode()
        now = self.loop.time()
        for client in list(self.clients):
            if 0.0 < client.sending_since < stalled_before:
                self._drop_slow(client)
                continue
            before = client.frames_pushed
            if not client.offer(batch, shared, sent_at, now):
                self._drop_slow(client)
            self.frames_total += client.frames_pushed - before

    def _drop_slow(self, client: StreamClient) -> None:
        if client.overflowed:
            return
        client.overflowed = True
        client.frames.clear()  # never sent: the client reconnects with its last next_cursor
        self.clients.discard(client)
        self.slow_closed_total += 1
        log.warning("websocket client fell more than %d frames behind or stopped reading; closing it (1013)",
                    MAX_FRAMES_BEHIND)
        client.wakeup.set()
        asyncio.ensure_future(
            _close(client.ws, WSCloseCode.TRY_AGAIN_LATER, b"client fell behind; reconnect with next_cursor",
                   client.transport)
        )

    # -- one connection -------------------------------------------------------------------

    async def serve(self, request: web.Request, query: StreamQuery) -> web.WebSocketResponse:
        # writer_limit: aiohttp checks for back-pressure only every writer_limit bytes (256 KiB
        # by default), so without it a stalled socket would soak up that much before its
        # sender noticed.
        offered = page_key_protocol(request)  # the UI's key, offered as a subprotocol: select it
        ws = web.WebSocketResponse(heartbeat=PROTOCOL_PING_SECONDS, compress=False, writer_limit=WRITE_BUFFER_HIGH,
                                   protocols=(offered,) if offered else ())
        await ws.prepare(request)
        _bound_send_buffer(request.transport)
        client = StreamClient(ws, query.ticket or None, query.run_id or None, query.limit)
        client.transport = request.transport
        high_water = self.last_sequence
        self.clients.add(client)
        sender: asyncio.Task[None] | None = None
        try:
            start = high_water if query.cursor is None else query.cursor
            caught_up = await self._catch_up(client, start, high_water)
            if not client.go_live(caught_up):
                self._drop_slow(client)
            # The first heartbeat marks the end of the catch-up.  Its cursor is the catch-up's
            # end, not client.cursor: live frames buffered meanwhile are still queued behind it,
            # and a client reconnecting with this cursor must get them again.
            client.frames.appendleft(_heartbeat_frame(caught_up))
            client.wakeup.set()
            client.sender_running = True
            client.last_frame_at = self.loop.time()
            sender = asyncio.create_task(self._send_loop(client))
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as error:
            log.exception("websocket stream failed")
            if not ws.closed:
                await ws.send_str(_encoder.encode({"type": "error", "message": str(error)}).decode())
        finally:
            self.clients.discard(client)
            if sender is not None:
                sender.cancel()
            if not ws.closed:
                await _close(ws, WSCloseCode.OK, b"")
        return ws

    async def _catch_up(self, client: StreamClient, start: int, high_water: int) -> int:
        cursor = start
        while cursor < high_water and not client.overflowed:
            after = cursor
            views, _ = await self.forum.read_async(
                lambda r, after=after: r.events_after(client.ticket, client.run_id, after, client.limit)
            )
            views = [v for v in views if v.sequence <= high_water]
            if not views:
                break
            cursor = views[-1].sequence
            await client.ws.send_frame(_events_frame([_encoder.encode(v) for v in views], cursor), WSMsgType.TEXT)
        return high_water if cursor < high_water else cursor

    async def _send_loop(self, client: StreamClient) -> None:
        """Sends what :meth:`StreamClient.push` could not write directly, honouring back-pressure."""
        ws = client.ws
        while not ws.closed and not client.overflowed:
            if not client.frames:
                client.wakeup.clear()
                await client.wakeup.wait()
                continue
            frame = client.frames.popleft()
            client.sending_since = self.loop.time()
            try:
                await ws.send_frame(frame, WSMsgType.TEXT)
            except (ConnectionError, RuntimeError):
                return  # the connection is going away; serve() cleans up
            client.sending_since = 0.0
            client.last_frame_at = self.loop.time()

    async def _heartbeat_loop(self) -> None:
        """One ticker for every client: a heartbeat to each one idle for ``heartbeat_seconds``
        (instead of a timer per client and frame)."""
        tick = max(0.05, min(1.0, self.heartbeat_seconds / 4))
        while not self._closing:
            await asyncio.sleep(self._next_heartbeat_check(tick))
            due = self.loop.time() - self.heartbeat_seconds
            for client in list(self.clients):
                if (client.sender_running and not client.overflowed and client.last_frame_at <= due
                        and not client.frames and not client.sending_since):
                    client.push(_heartbeat_frame(client.cursor))

    def _next_heartbeat_check(self, tick: float) -> float:
        """Seconds until a client may be due a heartbeat: the earliest ``last_frame_at +
        heartbeat_seconds`` of the clients that could get one now (``tick`` for one that is busy
        sending), at most half a heartbeat period, so a client connecting meanwhile is not missed.
        With no client at all the hub sleeps that half period instead of ticking."""
        now = self.loop.time()
        longest = max(tick, self.heartbeat_seconds / 2)
        delay = longest
        for client in self.clients:
            if client.sender_running and not client.overflowed and not client.frames and not client.sending_since:
                delay = min(delay, client.last_frame_at + self.heartbeat_seconds - now)
            else:
                delay = min(delay, tick)
        return max(0.05, delay)


def _bound_send_buffer(transport: Any) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    except OSError:  # not a TCP socket (tests on unix sockets) or refused: keep the default
        pass
    try:
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
    except (AttributeError, ValueError, RuntimeError):
        pass


async def _close(ws: web.WebSocketResponse, code: int, message: bytes, transport: Any = None) -> None:
    """Send the close frame and wait briefly for the peer's answer.

    A peer that does not answer in time (stalled, or not reading) gets its transport closed
    gracefully by aiohttp: what is already buffered, ending with our close frame, is still
    delivered if it resumes reading.  If it never does, the connection is aborted after
    ``SLOW_CLOSE_GRACE_SECONDS`` so it cannot pin memory forever.
    """
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), timeout=CLOSE_TIMEOUT_SECONDS)
    except (TimeoutError, ConnectionError, RuntimeError):
        if transport is not None and not transport.is_closing():
            transport.close()
        if transport is not None:
            asyncio.get_running_loop().call_later(SLOW_CLOSE_GRACE_SECONDS, transport.abort)


async def stream(request: web.Request) -> web.StreamResponse:
    query = parse_query(request, StreamQuery)
    hub = context(request).hub
    if hub is None:
        raise ApiError(503, "unavailable", "the stream is not ready yet")
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError(400, "websocket_required", "this route needs a WebSocket upgrade (Upgrade: websocket)")
    return await hub.serve(request, query)


def routes() -> list[Route]:
    return [
        Route(
            "GET", "/api/v1/forum/stream", stream, "Live event stream (WebSocket)", "forum",
            query=StreamQuery, responses={101: "websocket", 400: ErrorResponse},
            description=(
                "Upgrade to a WebSocket. Frames are JSON text: {type: forum.events, events, next_cursor, sent_at}, "
                "{type: heartbeat, next_cursor, sent_at}, {type: error, message}. Catch-up from `cursor` "
                "(default: now) then live, with no gap and no duplicate."
            ),
        )
    ]
