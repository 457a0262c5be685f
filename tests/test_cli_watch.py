"""``metawsm forum watch`` as a subprocess: live events, catch-up, daemon restarts, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from typing import Any

from metawsm.waiting import wait_until
from support.http import auth_headers

TICKET = "METAWSM-002"


class Watch:
    """``python -m metawsm forum watch`` with stdout/stderr read line by line on threads."""

    def __init__(self, server: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "METAWSM_SERVER"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metawsm", "forum", "watch", "--server", server, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._pump, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_lines(self, count: int, timeout: float = 30) -> list[str]:
        def enough() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"watch exited with {self.process.returncode}: {self.err}")
            return len(self.out) >= count

        wait_until(enough, timeout=timeout, message=f"watch printed {len(self.out)} of {count} lines")
        return list(self.out)

    def interrupt(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def post_json(server: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(server + "/api/v1" + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **auth_headers(server)})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def get_json(server: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(server + "/api/v1" + path, headers=auth_headers(server)),
                                timeout=30) as response:
        return json.loads(response.read())


def stream_clients(server: str) -> int:
    with urllib.request.urlopen(urllib.request.Request(server + "/metrics", headers=auth_headers(server)),
                                timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("metawsm_websocket_clients "):
                return int(float(line.split()[1]))
    return 0


def open_thread(server: str, title: str, ticket: str = TICKET) -> str:
    body = {"ticket": ticket, "title": title, "body": f"{title} body", "actor_type": "agent", "actor_name": "alice"}
    return post_json(server, "/forum/threads", body)["thread"]["thread_id"]


def add_post(server: str, thread_id: str, text: str) -> None:
    post_json(server, f"/forum/threads/{thread_id}/posts", {"body": text, "actor_name": "bob"})


def all_sequences(server: str) -> list[int]:
    return [e["sequence"] for e in get_json(server, "/forum/events?limit=1000")["events"]]


def sequences(lines: list[str]) -> list[int]:
    return [int(line.split(" ", 1)[0]) for line in lines]


def test_watch_prints_live_events_and_survives_daemon_restarts(serve_process):
    server = serve_process.url
    watch = Watch(server)
    try:
        wait_until(lambda: stream_clients(server) == 1, timeout=20, message="watch never connected")
        thread_id = open_thread(server, "before restart")
        for i in range(4):
            add_post(server, thread_id, f"before {i}")
        lines = watch.wait_lines(5)
        assert lines[0] == f'1 forum.thread.opened {thread_id} agent/alice "before restart" (normal)'
        assert lines[1] == f"2 forum.post.added {thread_id} human/bob before 0"

        # 1: a clean restart (SIGTERM); writes right after it come back, racing the reconnect
        serve_process.stop()
        wait_until(lambda: "reconnecting…" in watch.err, timeout=20, message="no reconnecting line")
        serve_process.start()
        for i in range(5):
            add_post(server, thread_id, f"during {i}")
        watch.wait_lines(10)
        wait_until(lambda: stream_clients(server) == 1, timeout=20)
        for i in range(3):
            add_post(server, thread_id, f"after {i}")
        watch.wait_lines(13)

        # 2: a crash (SIGKILL) and restart
        serve_process.kill()
        wait_until(lambda: watch.err.count("reconnecting…") == 2, timeout=20)
        serve_process.start()
        other = open_thread(server, "after crash")
        for i in range(3):
            add_post(server, other, f"crash {i}")
        watch.wait_lines(17)
        wait_until(lambda: stream_clients(server) == 1, timeout=20)
        add_post(server, other, "last")
        watch.wait_lines(18)
    finally:
        code = watch.interrupt() if watch.process.poll() is None else watch.process.returncode
        watch.kill()
    assert code == 0, watch.err
    assert not any("Traceback" in line for line in watch.err), watch.err
    assert watch.err == ["reconnecting…", "reconnecting…"]
    printed = sequences(watch.out)
    assert printed == list(range(1, 19)), printed  # contiguous, no gap, no duplicate
    assert printed == all_sequences(server)
    assert watch.out[-1] == f"18 forum.post.added {other} human/bob last"


def test_watch_cursor_replays_filtered_events_and_json(serve_process):
    server = serve_process.url
    a1 = open_thread(server, "a one", ticket="A")
    b1 = open_thread(server, "b one", ticket="B")
    add_post(server, a1, "a reply")
    add_post(server, b1, "b reply")

    watch = Watch(server, "--cursor", "0", "--ticket", "A", "--json")
    try:
        lines = watch.wait_lines(2)
        wait_until(lambda: stream_clients(server) == 1, timeout=20)
        open_thread(server, "b two", ticket="B")
        a2 = open_thread(server, "a two", ticket="A")
        lines = watch.wait_lines(3)
    finally:
        code = watch.interrupt()
    assert code == 0 and watch.err == []
    events = [json.loads(line) for line in lines]
    assert [e["envelope"]["thread_id"] for e in events] == [a1, a1, a2]
    assert {e["envelope"]["ticket"] for e in events} == {"A"}
    logged = {e["sequence"]: e for e in get_json(server, "/forum/events?ticket=A")["events"]}
    assert events == [logged[e["sequence"]] for e in events]  # the API's event objects, unchanged

    # --cursor skips what is at or below it
    watch = Watch(server, "--cursor", "3")
    try:
        lines = watch.wait_lines(3)
    finally:
        code = watch.interrupt()
    assert code == 0
    assert sequences(lines) == [4, 5, 6]


def test_watch_exits_cleanly_on_ctrl_c_while_the_daemon_is_down(serve_process):
    server = serve_process.url
    watch = Watch(server)
    try:
        wait_until(lambda: stream_clients(server) == 1, timeout=20, message="watch never connected")
        serve_process.stop()
        wait_until(lambda: "reconnecting…" in watch.err, timeout=20, message="no reconnecting line")
    finally:
        code = watch.interrupt()
    assert code == 0
    assert watch.err == ["reconnecting…"] and watch.out == []
