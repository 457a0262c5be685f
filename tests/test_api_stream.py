"""The WebSocket stream ``/api/v1/forum/stream`` against a real daemon and Redis.

Catch-up from a cursor then live, with no gap and no duplicate even while writes are landing
during the hand-over; filters; heartbeats (the test policy sends one a second); 400 before the
upgrade for a bad query; a stalled client closed with 1013 while another keeps receiving
everything; protocol ping/pong; SIGTERM closes the sockets and exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from metawsm.waiting import async_wait_until, wait_until
from support.daemon import ServeProcess, policy_data, serving
from support.http import auth_headers
from support.processes import short_id

STREAM = "/api/v1/forum/stream"


@pytest.fixture(scope="module")
def server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(redis_server.url, tmp_path_factory.mktemp("api-stream")) as process:
        yield process


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


def ticket() -> str:
    return f"WS-{uuid.uuid4().hex[:8]}"


async def open_thread(session: aiohttp.ClientSession, url: str, tk: str, **fields: Any) -> dict[str, Any]:
    body = {"ticket": tk, "title": fields.pop("title", "t"), "body": fields.pop("body", "b"), **fields}
    async with session.post(url + "/api/v1/forum/threads", json=body, headers=auth_headers(url)) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["thread"]


async def last_sequence(session: aiohttp.ClientSession, url: str) -> int:
    """The newest event's sequence (the debug snapshot lists the latest events first)."""
    async with session.get(url + "/api/v1/forum/debug?limit=1", headers=auth_headers(url)) as response:
        events = (await response.json())["debug"]["events"]
    return events[0]["sequence"] if events else 0


class Collector:
    """Reads frames from one WebSocket into lists, in the background."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.sequences: list[int] = []
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            self.frames.append(frame)
            if frame["type"] == "forum.events":
                self.events.extend(frame["events"])
                self.sequences.extend(e["sequence"] for e in frame["events"])

    def has(self, sequence: int) -> bool:
        return bool(self.sequences) and self.sequences[-1] >= sequence

    async def close(self) -> None:
        await self.ws.close()
        await self.task


async def connect(session: aiohttp.ClientSession, url: str, **query: Any) -> Collector:
    ws = await session.ws_connect(url + STREAM, params={k: str(v) for k, v in query.items()},
                                  headers=auth_headers(url))
    return Collector(ws)


# -- hand-over --------------------------------------------------------------------------------


async def test_catch_up_then_live_has_no_gap_and_no_duplicate_under_concurrent_writes(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    tk = ticket()
    for index in range(20):
        await open_thread(session, server.url, tk, title=f"before {index}")
    written: list[int] = []
    stop = asyncio.Event()

    async def writer(worker: int) -> None:
        index = 0
        while not stop.is_set():
            thread = await open_thread(session, server.url, tk, title=f"w{worker}-{index}")
            written.append(thread["last_event_sequence"])
            index += 1

    writers = [asyncio.create_task(writer(w)) for w in range(6)]
    clients: list[tuple[int, Collector]] = []
    try:
        # Connect several clients while the writers run: each hand-over races with new commits.
        for round_ in range(5):
            await async_wait_until(lambda: len(written) >= 30 * (round_ + 1), timeout=30, message="writes landing")
            clients.append((0, await connect(session, server.url, cursor=0)))
            clients.append((written[-1] // 2, await connect(session, server.url, cursor=written[-1] // 2, limit=7)))
        await async_wait_until(lambda: len(written) >= 200, timeout=30, message="writes landing")
    finally:
        stop.set()
        await asyncio.gather(*writers)
    newest = await last_sequence(session, server.url)
    assert newest >= max(written)
    for cursor, client in clients:
        await async_wait_until(lambda: client.has(newest), timeout=20,
                               message=f"client from cursor {cursor} reached {newest}")
        assert client.sequences == list(range(cursor + 1, newest + 1)), f"cursor {cursor}: gap or duplicate"
    for _, client in clients:
        await client.close()
    # batches respect the limit and next_cursor is the last event of the frame
    limited = clients[1][1]
    for frame in limited.frames:
        if frame["type"] == "forum.events":
            assert 1 <= len(frame["events"]) <= 7
            assert frame["next_cursor"] == frame["events"][-1]["sequence"]


async def test_default_cursor_is_now_and_the_first_frame_is_a_heartbeat(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    tk = ticket()
    await open_thread(session, server.url, tk)
    newest = await last_sequence(session, server.url)
    client = await connect(session, server.url)
    await async_wait_until(lambda: client.frames, timeout=10, message="first frame")
    first = client.frames[0]
    assert first["type"] == "heartbeat" and first["next_cursor"] == newest
    assert isinstance(first["sent_at"], str) and first["sent_at"].endswith("Z")
    thread = await open_thread(session, server.url, tk)
    await async_wait_until(lambda: client.has(thread["last_event_sequence"]), timeout=10, message="live event")
    assert client.sequences[0] == newest + 1  # nothing from before the connection is replayed
    event = client.events[-1]
    assert set(event) == {"sequence", "envelope", "payload_json"}
    assert event["envelope"]["thread_id"] == thread["thread_id"]
    assert event["payload_json"]["type"] == "forum.thread.opened"
    await client.close()


async def test_catch_up_ends_with_a_heartbeat_and_heartbeats_keep_coming(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    tk = ticket()
    threads = [await open_thread(session, server.url, tk) for _ in range(3)]
    first_sequence = threads[0]["last_event_sequence"]
    client = await connect(session, server.url, ticket=tk, cursor=first_sequence - 1)
    await async_wait_until(lambda: sum(f["type"] == "heartbeat" for f in client.frames) >= 3, timeout=10,
                           message="three heartbeats (heartbeat_seconds is 1)")
    kinds = [f["type"] for f in client.frames]
    first_heartbeat = kinds.index("heartbeat")
    assert kinds[:first_heartbeat] == ["forum.events"] * first_heartbeat and first_heartbeat >= 1
    assert client.sequences == [t["last_event_sequence"] for t in threads]
    assert client.frames[first_heartbeat]["next_cursor"] == threads[-1]["last_event_sequence"]
    cursors = [f["next_cursor"] for f in client.frames if f["type"] == "heartbeat"]
    assert cursors == sorted(cursors)
    await client.close()


async def test_filters_by_ticket_and_run_id_in_catch_up_and_live(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    ta, tb = ticket(), ticket()
    run = f"RUN-{short_id()}"

    async def write_mix(count: int) -> None:
        for index in range(count):
            await open_thread(session, server.url, ta if index % 2 else tb, run_id=run if index % 3 == 0 else "")

    await write_mix(12)
    by_ticket = await connect(session, server.url, ticket=ta, cursor=0)
    by_run = await connect(session, server.url, run_id=run, cursor=0)
    both = await connect(session, server.url, ticket=ta, run_id=run, cursor=0)
    await write_mix(12)
    newest = await last_sequence(session, server.url)

    async def expected(query: str) -> list[int]:
        async with session.get(f"{server.url}/api/v1/forum/events?{query}&limit=1000",
                               headers=auth_headers(server.url)) as response:
            return [e["sequence"] for e in (await response.json())["events"]]

    for client, query in ((by_ticket, f"ticket={ta}"), (by_run, f"run_id={run}"), (both, f"ticket={ta}&run_id={run}")):
        want = await expected(query)
        assert want, query
        await async_wait_until(lambda: client.has(want[-1]), timeout=15, message=f"filtered stream {query}")
        assert client.sequences == want, query
        # heartbeats move the cursor past events the filter skipped
        await async_wait_until(lambda: any(f["type"] == "heartbeat" and f["next_cursor"] >= newest
                                           for f in client.frames), timeout=10, message="heartbeat cursor")
        for event in client.events:
            env = event["envelope"]
            assert "ticket=" not in query or env["ticket"] == ta
            assert "run_id=" not in query or env.get("run_id") == run
        await client.close()


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"cursor": "abc"}, "invalid_cursor"),
        ({"cursor": "-1"}, "invalid_cursor"),
        ({"limit": "0"}, "invalid_limit"),
        ({"limit": "1001"}, "invalid_limit"),
        ({"limit": "many"}, "invalid_limit"),
    ],
)
async def test_bad_query_is_http_400_before_the_upgrade(
    server: ServeProcess, session: aiohttp.ClientSession, query: dict[str, str], code: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await session.ws_connect(server.url + STREAM, params=query, headers=auth_headers(server.url))
    assert raised.value.status == 400
    async with session.get(server.url + STREAM, params=query, headers=auth_headers(server.url)) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == code


async def test_plain_get_without_upgrade_is_400(server: ServeProcess, session: aiohttp.ClientSession) -> None:
    async with session.get(server.url + STREAM, headers=auth_headers(server.url)) as response:
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "websocket_required"


# -- slow clients -----------------------------------------------------------------------------


def raw_websocket(url: str, path: str) -> tuple[socket.socket, bytes]:
    """A WebSocket client that reads only when told to, with a tiny receive buffer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    key = base64.b64encode(os.urandom(16)).decode()
    auth = "".join(f"{name}: {value}\r\n" for name, value in auth_headers(url).items())
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "connection closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, head.split(b"\r\n\r\n", 1)[1]


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Server frames (unmasked): (opcode, payload)."""
    frames, index = [], 0
    while index + 2 <= len(data):
        opcode, length, start = data[index] & 0x0F, data[index + 1] & 0x7F, index + 2
        if length == 126:
            (length,), start = struct.unpack(">H", data[start:start + 2]), start + 2
        elif length == 127:
            (length,), start = struct.unpack(">Q", data[start:start + 8]), start + 8
        if start + length > len(data):
            break
        frames.append((opcode, data[start:start + length]))
        index = start + length
    return frames


def read_until_closed(sock: socket.socket, data: bytes) -> bytes:
    sock.settimeout(10)
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        frames = parse_frames(data)
        if frames and frames[-1][0] == 0x8:
            break
    return data


async def test_a_stalled_client_is_closed_with_1013_while_another_gets_everything(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    tk = ticket()
    start = await last_sequence(session, server.url)
    stalled, early = raw_websocket(server.url, f"{STREAM}?limit=1")  # one frame per event, never read
    healthy = await connect(session, server.url)

    async def slow_closed() -> float:
        async with session.get(server.url + "/metrics", headers=auth_headers(server.url)) as response:
            for line in (await response.text()).splitlines():
                if line.startswith("metawsm_websocket_slow_closed_total "):
                    return float(line.split()[1])
        raise AssertionError("metawsm_websocket_slow_closed_total missing")

    closed_before = await slow_closed()
    written: list[int] = []
    body = "x" * 4000  # big frames fill the (bounded) socket buffers quickly
    done = asyncio.Event()

    async def writer() -> None:
        while not done.is_set() and len(written) < 4000:
            thread = await open_thread(session, server.url, tk, body=body)
            written.append(thread["last_event_sequence"])
            if len(written) % 50 == 0 and await slow_closed() > closed_before:
                done.set()

    await asyncio.wait_for(asyncio.gather(*(writer() for _ in range(32))), timeout=90)
    assert await slow_closed() == closed_before + 1, "the stalled client was not dropped"
    newest = max(written)
    await async_wait_until(lambda: healthy.has(newest), timeout=20, message="healthy client got everything")
    assert healthy.sequences == list(range(start + 1, newest + 1))
    assert not healthy.ws.closed

    # The stalled client reads again: what was already sent, then the close frame with 1013.
    data = await asyncio.get_running_loop().run_in_executor(None, read_until_closed, stalled, early)
    stalled.close()
    frames = parse_frames(data)
    assert frames and frames[-1][0] == 0x8, "no close frame"
    code = struct.unpack(">H", frames[-1][1][:2])[0]
    assert code == 1013, code
    received = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    sequences = [e["sequence"] for f in received if f["type"] == "forum.events" for e in f["events"]]
    assert sequences == list(range(start + 1, start + 1 + len(sequences)))
    for frame in received:  # with limit=1 every frame's next_cursor is exactly its event
        if frame["type"] == "forum.events":
            assert frame["next_cursor"] == frame["events"][-1]["sequence"]
    assert len(sequences) < newest - start, "the stalled client should not have been able to take everything"

    # It reconnects with its last next_cursor and loses nothing.
    resumed_from = max(f["next_cursor"] for f in received)
    again = await connect(session, server.url, cursor=resumed_from)
    await async_wait_until(lambda: again.has(newest), timeout=20, message="reconnected client caught up")
    assert sequences + again.sequences == list(range(start + 1, newest + 1))
    await again.close()
    await healthy.close()


# -- ping/pong and shutdown -------------------------------------------------------------------


async def test_protocol_ping_pong_keeps_an_idle_connection_alive(
    server: ServeProcess, session: aiohttp.ClientSession
) -> None:
    # The client pings every 0.3 s and drops the connection if a pong is 0.15 s late.
    ws = await session.ws_connect(server.url + STREAM, heartbeat=0.3, headers=auth_headers(server.url))
    client = Collector(ws)
    await async_wait_until(lambda: sum(f["type"] == "heartbeat" for f in client.frames) >= 3, timeout=10,
                           message="idle for three heartbeat periods")
    assert not ws.closed and ws.close_code is None
    thread = await open_thread(session, server.url, ticket())
    await async_wait_until(lambda: client.has(thread["last_event_sequence"]), timeout=10, message="still live")
    await client.close()


async def test_sigterm_closes_streams_and_exits_0(
    redis_url: str, redis_namespace: str, tmp_path: Any, session: aiohttp.ClientSession
) -> None:
    process = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace), debug=False)
    process.start()
    try:
        clients = [await connect(session, process.url, cursor=0) for _ in range(3)]
        await async_wait_until(lambda: all(c.frames for c in clients), timeout=10, message="streams open")
        assert process.process is not None
        started = time.monotonic()
        process.process.terminate()
        for client in clients:
            await asyncio.wait_for(client.task, timeout=10)
            assert client.ws.closed
            assert client.ws.close_code == 1001, client.ws.close_code  # going away
        code = await asyncio.get_running_loop().run_in_executor(None, process.process.wait, 15)
        assert code == 0, process.log()
        assert time.monotonic() - started < 5, "shutdown took too long"
        assert "stopped" in process.log()
    finally:
        process.stop()


def test_stream_frames_are_counted_in_metrics(server: ServeProcess) -> None:
    import urllib.request

    def frames_total() -> float:
        request = urllib.request.Request(server.url + "/metrics", headers=auth_headers(server.url))
        with urllib.request.urlopen(request, timeout=5) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("metawsm_websocket_frames_total "):
                    return float(line.split()[1])
        return -1.0

    assert wait_until(frames_total, timeout=5) > 0
