"""``Idempotency-Key`` on writes, against real ``metawsm serve`` processes, Redis and SQLite.

A key is applied once and its retries are answered alike (byte for byte), also across a
``kill -9`` of the daemon; another request under the same key is refused (409); a bad key is
refused (400).  And the fault of issue 15: with the database locked past the intake's ask
timeout, ``metawsm forum ask`` gets a 503 on its first attempt, retries with the same key once
the lock is gone, and exactly one thread exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metawsm.cli.client import RETRY_DEADLINE, ApiFailure, DaemonClient
from metawsm.waiting import wait_until
from support.daemon import ServeProcess, policy_data, serving
from support.http import auth_headers

API = "/api/v1"
KEY_HEADER = "Idempotency-Key"


class Answer:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def post(server: str, path: str, body: Any, key: str | None = None, raw: bytes | None = None) -> Answer:
    headers = {"Content-Type": "application/json", **auth_headers(server)}
    if key is not None:
        headers[KEY_HEADER] = key
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server + API + path, data=data, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Answer(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), dict(error.headers))


def get(server: str, path: str) -> Any:
    request = urllib.request.Request(server + API + path, headers=auth_headers(server))
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def threads_of(server: str, ticket: str) -> list[dict[str, Any]]:
    threads: list[dict[str, Any]] = get(server, f"/forum/threads?ticket={ticket}&limit=500")["threads"]
    return threads


def opened_by_events(db_path: Path, ticket: str) -> int:
    """Threads opened in the event log (the truth; the list reads a projection)."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT count(*) FROM forum_events WHERE event_type = 'forum.thread.opened'"
                           " AND ticket = ?", (ticket,)).fetchone()
    return int(row[0])


def ask_body(ticket: str, title: str = "Which DB?") -> dict[str, Any]:
    return {"ticket": ticket, "title": title, "body": "Postgres or SQLite?"}


def metric(server: str, name: str) -> float:
    request = urllib.request.Request(server + "/metrics", headers=auth_headers(server))
    with urllib.request.urlopen(request, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(redis_server.url, tmp_path_factory.mktemp("idempotency")) as process:
        yield process


# -- one key, one write ----------------------------------------------------------------------------


def test_the_same_key_and_body_twice_opens_one_thread_and_answers_alike(server: ServeProcess) -> None:
    url = server.url
    first = post(url, "/forum/threads", ask_body("IDEM-1"), key="open-1")
    assert first.status == 200, first.body
    # The same request, spelled differently (key order, spacing): the same canonical body.
    spelled = b'{ "body": "Postgres or SQLite?",  "title": "Which DB?", "ticket": "IDEM-1" }'
    for again in (post(url, "/forum/threads", ask_body("IDEM-1"), key="open-1"),
                  post(url, "/forum/threads", None, key="open-1", raw=spelled)):
        assert (again.status, again.body) == (first.status, first.body)
        assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert [t["thread_id"] for t in threads_of(url, "IDEM-1")] == [first.json["thread"]["thread_id"]]
    assert opened_by_events(server.db_path, "IDEM-1") == 1
    # Without a key, the same body is a new request: a second thread.
    assert post(url, "/forum/threads", ask_body("IDEM-1")).status == 200
    assert opened_by_events(server.db_path, "IDEM-1") == 2


def test_concurrent_requests_with_one_key_write_once_and_answer_alike(server: ServeProcess) -> None:
    url = server.url
    answers: list[Answer] = []
    lock = threading.Lock()

    def send() -> None:
        answer = post(url, "/forum/threads", ask_body("IDEM-2"), key="open-together")
        with lock:
            answers.append(answer)

    workers = [threading.Thread(target=send) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(answers) == 8
    assert {(a.status, a.body) for a in answers} == {(answers[0].status, answers[0].body)}
    assert answers[0].status == 200
    assert opened_by_events(server.db_path, "IDEM-2") == 1


def test_the_same_key_with_another_request_is_refused_409(server: ServeProcess) -> None:
    url = server.url
    first = post(url, "/forum/threads", ask_body("IDEM-3"), key="reused")
    assert first.status == 200
    thread_id = first.json["thread"]["thread_id"]
    for path, body in (("/forum/threads", ask_body("IDEM-3", title="Another question")),
                       (f"/forum/threads/{thread_id}/posts", {"body": "a post"})):
        refused = post(url, path, body, key="reused")
        assert refused.status == 409, refused.body
        assert refused.json["error"]["code"] == "idempotency_key_reused"
        assert "reused" in refused.json["error"]["message"] and "different request" in refused.json["error"]["message"]
    assert opened_by_events(server.db_path, "IDEM-3") == 1
    assert get(url, f"/forum/threads/{thread_id}")["thread"]["posts_count"] == 1
    # The first request is still answered as it was.
    assert post(url, "/forum/threads", ask_body("IDEM-3"), key="reused").body == first.body


@pytest.mark.parametrize("key", ["", "k" * 129, "tab\tinside", "caf\xe9"], ids=["empty", "129", "tab", "latin-1"])
def test_a_bad_key_is_refused_400_naming_the_header(server: ServeProcess, key: str) -> None:
    refused = post(server.url, "/forum/threads", ask_body("IDEM-4"), key=key)
    assert refused.status == 400, refused.body
    assert refused.json["error"]["code"] == "invalid_idempotency_key"
    assert KEY_HEADER in refused.json["error"]["message"]
    assert opened_by_events(server.db_path, "IDEM-4") == 0


def test_the_longest_key_is_accepted(server: ServeProcess) -> None:
    key = "~ !" + "k" * 125
    assert len(key) == 128
    first = post(server.url, "/forum/threads", ask_body("IDEM-5"), key=key)
    assert first.status == 200
    assert post(server.url, "/forum/threads", ask_body("IDEM-5"), key=key).body == first.body


def test_a_refusal_is_answered_again_and_writes_nothing(server: ServeProcess) -> None:
    url = server.url
    for path in ("/forum/threads/fthr_missing/posts", "/runs/run_missing/stop"):
        first = post(url, path, {"body": "hello"} if "forum" in path else {}, key=f"refused {path}")
        assert first.status == 404, first.body
        again = post(url, path, {"body": "hello"} if "forum" in path else {}, key=f"refused {path}")
        assert (again.status, again.body) == (first.status, first.body)
        assert again.headers.get("Idempotent-Replayed") == "true"


# -- across a crash ----------------------------------------------------------------------------------


def test_a_retry_after_kill_9_answers_the_same_and_writes_nothing(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    process = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace))
    try:
        url = process.start().url
        first = post(url, "/forum/threads", ask_body("IDEM-6"), key="across-a-crash")
        assert first.status == 200, first.body
        thread_id = first.json["thread"]["thread_id"]
        process.kill()
        # An expired key from long ago: the restarted intake's sweep removes it.
        with sqlite3.connect(process.db_path) as conn:
            conn.execute("INSERT INTO api_idempotency_keys (caller, idempotency_key, fingerprint, created_at)"
                         " VALUES ('operator', 'ancient', 'x', '2000-01-01T00:00:00.000000Z')")
        process.start()
        again = post(url, "/forum/threads", ask_body("IDEM-6"), key="across-a-crash")
        assert (again.status, again.body) == (first.status, first.body)
        assert [t["thread_id"] for t in threads_of(url, "IDEM-6")] == [thread_id]
        assert opened_by_events(process.db_path, "IDEM-6") == 1

        def keys() -> list[str]:
            with sqlite3.connect(f"file:{process.db_path}?mode=ro", uri=True) as conn:
                return [row[0] for row in conn.execute("SELECT idempotency_key FROM api_idempotency_keys")]

        wait_until(lambda: "ancient" not in keys(), timeout=10, message="the expired key was not pruned")
        assert "across-a-crash" in keys()
    finally:
        process.stop()


def test_a_write_recorded_before_a_crash_but_never_answered_is_answered_on_retry(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    """The key is recorded with the write in the intake's transaction; the answer later.  A daemon
    killed in between (simulated by clearing the stored answer) answers the retry from the
    recorded write: the thread, once, and no second write."""
    process = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace))
    try:
        url = process.start().url
        first = post(url, "/forum/threads", ask_body("IDEM-7"), key="unanswered")
        assert first.status == 200
        process.kill()
        with sqlite3.connect(process.db_path) as conn:
            row = conn.execute("SELECT thread_id, event_id FROM api_idempotency_keys WHERE idempotency_key = ?",
                               ("unanswered",)).fetchone()
            assert row[0] == first.json["thread"]["thread_id"] and row[1].startswith("fevt_")
            conn.execute("UPDATE api_idempotency_keys SET response_status = 0, response_body = NULL")
        process.start()
        again = post(url, "/forum/threads", ask_body("IDEM-7"), key="unanswered")
        assert again.status == 200
        assert again.json["thread"]["thread_id"] == first.json["thread"]["thread_id"]
        assert opened_by_events(process.db_path, "IDEM-7") == 1
        third = post(url, "/forum/threads", ask_body("IDEM-7"), key="unanswered")
        assert (third.status, third.body) == (again.status, again.body)  # stored from then on
    finally:
        process.stop()


# -- the locked database of issue 15 ----------------------------------------------------------------


def test_the_cli_retries_a_503_from_a_locked_database_without_a_duplicate(server: ServeProcess) -> None:
    url = server.url
    errors_503 = 'metawsm_http_errors_total{status="503"}'
    before = metric(url, errors_503)
    lock = sqlite3.connect(server.db_path, isolation_level=None, timeout=10)
    lock.execute("BEGIN IMMEDIATE")  # the write lock: the intake waits (busy timeout) past its 5 s ask
    env = {k: v for k, v in os.environ.items() if k != "METAWSM_SERVER"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "metawsm", "forum", "ask", "--ticket", "IDEM-LOCK", "--title", "Locked?",
         "--body", "one thread only", "--server", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_until(lambda: metric(url, errors_503) > before, timeout=15, interval=0.05,
                   message="the first attempt was not answered 503")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    stdout, stderr = cli.communicate(timeout=60)
    assert cli.returncode == 0, stderr
    thread_id = stdout.split("\t", 1)[0]
    assert thread_id.startswith("fthr_")
    wait_until(lambda: threads_of(url, "IDEM-LOCK"), timeout=10)
    assert [t["thread_id"] for t in threads_of(url, "IDEM-LOCK")] == [thread_id]
    assert opened_by_events(server.db_path, "IDEM-LOCK") == 1
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        keys = conn.execute("SELECT idempotency_key, response_status FROM api_idempotency_keys WHERE thread_id = ?",
                            (thread_id,)).fetchall()
    assert len(keys) == 1 and keys[0][0].startswith("cli-") and keys[0][1] == 200, keys  # one key, both attempts


# -- runs ---------------------------------------------------------------------------------------------


def test_a_run_start_under_a_key_starts_one_run_also_across_a_crash(runs_env: Any) -> None:
    """Run start records its key in the transaction that stores the run: a retry after the
    daemon died before answering answers with that run and starts no other."""
    env = runs_env()
    body = {"mode": "run", "tickets": ["T-IDEM"], "repos": [env.repo_name], "cwd": str(env.repo)}
    first = post(env.url, "/runs", body, key="start-once")
    assert first.status == 200, first.body
    run_id = first.json["run"]["run_id"]
    again = post(env.url, "/runs", body, key="start-once")
    assert (again.status, again.body) == (first.status, first.body)
    env.serve.kill()
    with sqlite3.connect(env.serve.db_path) as conn:
        recorded = conn.execute("SELECT run_id FROM api_idempotency_keys WHERE idempotency_key = 'start-once'")
        assert recorded.fetchone()[0] == run_id
        conn.execute("UPDATE api_idempotency_keys SET response_status = 0, response_body = NULL")  # never answered
    env.serve.start()
    retried = post(env.url, "/runs", body, key="start-once")
    assert retried.status == 200, retried.body
    assert retried.json["run"]["run_id"] == run_id
    with sqlite3.connect(f"file:{env.serve.db_path}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


# -- the CLI's client, against stand-in servers --------------------------------------------------------


async def test_the_client_retries_a_write_with_one_key_and_gives_up_in_bounds() -> None:
    keys: list[str | None] = []
    unavailable = b'{"error": {"code": "unavailable", "message": "actor root/forum/intake is restarting"}}'

    async def flaky(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        if len(keys) < 3:
            return web.Response(status=503, body=unavailable, content_type="application/json")
        return web.json_response({"thread": {"thread_id": "fthr_1"}})

    async def down(request: web.Request) -> web.Response:
        keys.append(request.headers.get("Idempotency-Key"))
        return web.Response(status=503, body=unavailable, content_type="application/json")

    app = web.Application()
    app.router.add_post("/flaky", flaky)
    app.router.add_post("/down", down)
    app.router.add_get("/down", down)
    loop = asyncio.get_running_loop()
    async with TestServer(app) as server:
        client = DaemonClient(str(server.make_url("")), token="")
        response = await loop.run_in_executor(None, client.post, "/flaky", {"title": "t"})
        assert response.status == 200 and len(keys) == 3
        assert len(set(keys)) == 1 and str(keys[0]).startswith("cli-") and len(str(keys[0])) == 36

        first_key = keys[0]
        keys.clear()
        started = time.monotonic()
        with pytest.raises(ApiFailure) as caught:
            await loop.run_in_executor(None, client.post, "/down", {})
        assert caught.value.status == 503 and len(keys) == 4 and len(set(keys)) == 1
        assert keys[0] != first_key  # each write command has a key of its own
        assert time.monotonic() - started < RETRY_DEADLINE

        keys.clear()  # a read makes one attempt and sends no key
        with pytest.raises(ApiFailure):
            await loop.run_in_executor(None, client.get, "/down")
        assert keys == [None]


async def test_the_client_retries_a_write_whose_connection_closed_before_the_answer() -> None:
    """As when the daemon is killed while handling it: the request was sent, no answer came."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        requests.append(head)
        if len(requests) > 1:
            body = b'{"thread": {"thread_id": "fthr_1"}}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = DaemonClient(f"http://127.0.0.1:{port}", token="")
        response = await asyncio.get_running_loop().run_in_executor(None, client.post, "/w", {"body": "b"})
    finally:
        server.close()
        await server.wait_closed()
    assert response.status == 200 and len(requests) == 2
    sent = [next(line for line in head.split(b"\r\n") if line.startswith(b"Idempotency-Key")) for head in requests]
    assert sent[0] == sent[1]
