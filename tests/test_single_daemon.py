"""One daemon per database (issue 15, item 1), with real `serve` processes and a real Redis.

* A second `serve` on a database in use is refused within a second with one line naming the
  database, the holder's pid and its address; the first daemon does not notice (no restart,
  health still ok, writes still work).
* After `kill -9` of the holder the OS has dropped the lock, and a new `serve` starts at once.
* An in-process daemon takes the same lock.
* A namespace claim lost to another database fails the daemon once, visibly (health `failed`
  with the reason, exit 3), instead of restarting its pipeline for ever.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from metawsm.daemon import Daemon, StartupError
from metawsm.daemon_lock import DatabaseInUse, DatabaseLock, lock_path_for
from metawsm.transport.namespace import NamespaceClaim, NamespaceTaken
from metawsm.transport.redis_process import free_tcp_port
from metawsm.waiting import wait_until
from support.daemon import InProcessDaemon, ServeProcess, make_policy, policy_data
from support.http import auth_headers

REFUSAL_SECONDS = 1.0


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body if body is not None else {}).encode() if method != "GET" else None
    headers = {"Content-Type": "application/json", **auth_headers(url)}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def health(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    return call(server.url + "/api/v1/health")


def serve_again(cwd: Path, db: str | Path, policy: str | Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """A second `metawsm serve` on another port; its result and how long it took."""
    argv = [sys.executable, "-m", "metawsm", "serve", "--addr", f"127.0.0.1:{free_tcp_port()}",
            "--db", str(db), "--policy", str(policy), "--debug"]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_a_second_serve_on_the_same_database_is_refused_and_the_first_is_untouched(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    first = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace)).start()
    assert first.process is not None
    alias = tmp_path / "alias"
    alias.symlink_to(first.workdir)
    try:
        status, before = health(first)
        assert status == 200 and before["status"] == "ok", before
        assert before["actors"]["restarts_total"] == 0
        lock_file = lock_path_for(first.db_path)
        record = lock_file.read_bytes()
        assert json.loads(record)["pid"] == first.process.pid

        expected = (f"error: database {first.db_path.resolve()} is in use by metawsm serve "
                    f"(pid {first.process.pid}, {first.url})\n")
        # Two spellings of the same database: relative to the working directory, and through a
        # symlinked directory.
        for cwd, db in ((first.workdir, ".metawsm/metawsm.db"), (tmp_path, alias / ".metawsm" / "metawsm.db")):
            second, seconds = serve_again(cwd, db, first.policy_path)
            assert second.returncode == 1, second
            assert second.stderr == expected and second.stdout == "", second
            assert seconds < REFUSAL_SECONDS, f"refused after {seconds:.2f}s"

        assert lock_file.read_bytes() == record  # the second one wrote nothing
        status, after = health(first)
        assert status == 200 and after["status"] == "ok", after
        assert after["actors"]["restarts_total"] == 0 and after["actors"]["alive"] == after["actors"]["total"]
        status, opened = call(first.url + "/api/v1/forum/threads", "POST",
                              {"ticket": "ONE-1", "title": "still writable", "body": "b"})
        assert status == 200, opened
        status, listed = call(first.url + "/api/v1/forum/threads?ticket=ONE-1")
        assert status == 200 and [t["title"] for t in listed["threads"]] == ["still writable"], listed
        log = first.log()
        assert "Traceback" not in log and "refresh() before claim()" not in log, log
    finally:
        assert first.stop() == 0, first.log()
    assert lock_path_for(first.db_path).read_text() == ""  # a clean stop clears the record


def test_after_kill_9_a_new_serve_starts_on_the_same_database(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace)).start()
    assert server.process is not None
    try:
        killed_pid = server.process.pid
        status, opened = call(server.url + "/api/v1/forum/threads", "POST",
                              {"ticket": "ONE-2", "title": "before the crash", "body": "b"})
        assert status == 200, opened
        server.kill()
        assert json.loads(lock_path_for(server.db_path).read_text())["pid"] == killed_pid  # left behind

        server.start()  # same database, same port, at once: the OS dropped the lock with the process
        assert server.process.pid != killed_pid
        record = json.loads(lock_path_for(server.db_path).read_text())
        assert record["pid"] == server.process.pid and record["address"] == server.url
        assert record["db_path"] == str(server.db_path.resolve())
        status, body = health(server)
        assert status == 200 and body["status"] == "ok", body
        status, detail = call(server.url + f"/api/v1/forum/threads/{opened['thread']['thread_id']}")
        assert status == 200 and detail["thread"]["title"] == "before the crash", detail
        status, again = call(server.url + "/api/v1/forum/threads", "POST",
                             {"ticket": "ONE-2", "title": "after the crash", "body": "b"})
        assert status == 200, again
    finally:
        assert server.stop() == 0, server.log()


def test_an_in_process_daemon_takes_the_same_lock(forum_daemon: InProcessDaemon, redis_url: str,
                                                  redis_namespace: str, tmp_path: Path) -> None:
    db = tmp_path / "metawsm.db"
    second = Daemon(make_policy(redis_url, redis_namespace), db, server_url="http://127.0.0.1:1")
    with pytest.raises(StartupError) as refused:
        second.start()
    assert str(refused.value) == (f"database {db.resolve()} is in use by metawsm serve "
                                  f"(pid {os.getpid()}, http://127.0.0.1:3001)")
    second.stop()  # it never held the lock, so it must not drop the first daemon's
    with pytest.raises(DatabaseInUse):
        DatabaseLock.acquire(db, "http://127.0.0.1:2")
    assert forum_daemon.system.summary()["restarts_total"] == 0

    forum_daemon.stop()
    with DatabaseLock.acquire(db, "http://127.0.0.1:2") as lock:  # free once the daemon stopped
        assert lock.held and lock.holder.pid == os.getpid()
    assert not lock.held


def test_a_lost_namespace_claim_fails_the_daemon_once_with_the_reason(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace)).start()
    assert server.process is not None
    other_db = tmp_path / "other" / "metawsm.db"
    thief = NamespaceClaim(redis_url, redis_namespace, other_db)
    raw = redis.Redis.from_url(redis_url)
    try:
        def steal() -> bool:
            # As if the daemon had stalled past its TTL while another database's daemon started.
            raw.delete(f"{redis_namespace}:owner")
            try:
                thief.claim()
                return True
            except NamespaceTaken:
                return False  # the daemon's refresh set it again in between: once more

        wait_until(steal, timeout=10, message="another database took the namespace")
        def failed() -> dict[str, Any]:
            status, body = health(server)
            return body if status == 503 else {}

        body = wait_until(failed, timeout=30, message="health failed after the claim was lost")
        assert body["status"] == "failed", body
        assert body["reason"].startswith("namespace claim lost: "), body
        assert f"db {other_db.resolve()}" in body["reason"], body
        code = wait_until(lambda: server.process.poll() if server.process else None, timeout=15,
                          message="serve exits by itself")
        assert code == 3, server.log()
        log = server.log()
        assert log.count("the daemon cannot go on: namespace claim lost") == 1, log
        assert "refresh() before claim()" not in log and "restarting" not in log, log

        # What a service manager's restart meets: a refusal at start, with the same cause.
        again, _ = serve_again(server.workdir, server.db_path, server.policy_path)
        assert again.returncode == 1, again
        assert f"is in use by another metawsm serve (db {other_db.resolve()}" in again.stderr, again.stderr
    finally:
        server.stop()
        thief.release()
        thief.close()
        raw.close()
