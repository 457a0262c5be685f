"""A full disk under a real ``metawsm serve`` (issue 15, item 4).

The daemon's ``.metawsm`` directory (database, WAL, lock and token files) lives on a small tmpfs
mounted for the test; the disk is then filled with a file.  What must hold:

* writes are refused fast with 503 ``storage_unavailable`` whose message starts with
  ``disk full: <db path>``, and health is ``degraded`` with exactly that reason;
* while the disk stays full nothing is added to any Redis stream (no republishing), no actor
  restarts and no supervisor gives up;
* once space returns, writes resume by themselves, and every write that was acknowledged (200 or
  202) is present exactly once, while the refused ones are absent.

Mounting needs root (or CAP_SYS_ADMIN); the test is skipped with the reason where it is refused.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from metawsm.store.faults import DISK_FULL, READ_ONLY, StorageStatus, classify
from metawsm.waiting import wait_until
from support.daemon import ServeProcess, policy_data
from support.http import auth_headers

TMPFS_SIZE = "8m"
# How long the full disk is watched for restarts and stream growth: several relay sweeps (1 s
# each, the pace at which the old relay republished everything pending) and consumer retries.
WATCH_SECONDS = 4.0
# A generous bound on one refused write: the old refusal came only after the intake's 5 s ask
# timed out, the new one comes from the intake's mailbox without touching the disk.
REFUSAL_BOUND_SECONDS = 2.5


def call(url: str, method: str = "GET", body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body if body is not None else {}).encode() if method != "GET" else None
    headers = {"Content-Type": "application/json", **auth_headers(url)}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_SIZE mounted at ``<tmp>/serve/.metawsm``; unmounted afterwards."""
    mount_point = tmp_path / "serve" / ".metawsm"
    mount_point.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); "
                    "the disk-full test needs root or CAP_SYS_ADMIN")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as handle:  # unbuffered: nothing left to flush at close
        try:
            while True:
                handle.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def entries_added(redis_url: str, namespace: str) -> int:
    """Entries ever added to the namespace's streams (XINFO's counter: trimming does not lower it)."""
    client = redis.Redis.from_url(redis_url)
    try:
        total = 0
        for key in client.scan_iter(match=f"{namespace}.*", _type="STREAM"):
            total += int(client.xinfo_stream(key)["entries-added"])
        return total
    finally:
        client.close()


def health(server: ServeProcess) -> dict[str, Any]:
    status, body = call(server.url + "/api/v1/health")
    assert status == 200, body
    return body


def open_thread(server: ServeProcess, title: str) -> tuple[int, Any, float]:
    started = time.monotonic()
    status, body = call(server.url + "/api/v1/forum/threads", "POST",
                        {"ticket": "DISK-1", "title": title, "body": f"body of {title}"})
    return status, body, time.monotonic() - started


def count_titles(db_path: Path, titles: list[str]) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return {title: conn.execute("SELECT COUNT(*) FROM forum_threads WHERE title = ?", (title,)).fetchone()[0]
                for title in titles}
    finally:
        conn.close()


class Writers:
    """Threads opening threads as fast as answers come back, until stopped; every title is unique,
    so "present once" is a count.  200 and 202 are acknowledged, 503 ``storage_unavailable`` refused."""

    def __init__(self, server: ServeProcess, count: int) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.refusals: list[dict[str, Any]] = []
        self.unexpected: list[tuple[int, Any]] = []
        self.stopped = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(count)]
        self.sent = 0

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopped.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, number: int) -> None:
        index = 0
        while not self.stopped.is_set():
            title = f"load {number}-{index}"
            index += 1
            status, body, _ = open_thread(self.server, title)
            with self.lock:
                self.sent += 1
                if status in (200, 202):
                    self.acknowledged.append(title)
                elif status == 503 and body["error"]["code"] == "storage_unavailable":
                    self.refused.append(title)
                    self.refusals.append(body)
                else:
                    self.unexpected.append((status, body))

    def refused_count(self) -> int:
        with self.lock:
            return len(self.refused)


def test_a_full_disk_refuses_writes_fast_and_everything_resumes_when_space_returns(
    small_disk: Path, redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace))
    server.log_path = tmp_path / "serve.log"  # not on the small disk: the log must go on
    server.start()
    acknowledged: list[str] = []
    refused: list[str] = []
    try:
        db = server.db_path.resolve()
        for i in range(10):
            status, body, _ = open_thread(server, f"before {i}")
            assert status == 200, body
            acknowledged.append(f"before {i}")
        assert health(server)["status"] == "ok"

        # Fill the disk while writes are in flight, so the fault meets every stage at work: the
        # intake committing, the relay between publishing and marking sent, the handler and the
        # projections applying.  (The first writes may still fit in space SQLite holds already.)
        with Writers(server, 4) as writers:
            wait_until(lambda: writers.sent >= 20, timeout=30, message="the writers did not get going")
            filler = fill(small_disk)
            wait_until(lambda: writers.refused_count() >= 5, timeout=60,
                       message="the full disk never refused a write")
        assert not writers.unexpected, writers.unexpected[:3]
        acknowledged += writers.acknowledged
        refused += writers.refused
        for refusal in writers.refusals:
            assert refusal["error"]["message"].startswith(f"disk full: {db} ("), refusal

        verdict = wait_until(lambda: (body := health(server))["status"] == "degraded" and body, timeout=10,
                             message="health never said degraded")
        assert verdict["reason"] == f"disk full: {db}", verdict
        # What was committed before the fault is published once by now (the relay does not wait);
        # from here on nothing may be added to any stream.
        added = entries_added(redis_url, redis_namespace)
        restarts = verdict["actors"]["restarts_total"]
        assert restarts == 0, verdict

        # Watch the full disk: every write refused fast with the reason, health steady, no restart,
        # and not one entry added to Redis (the relay must not republish what it could not mark).
        watch_until = time.monotonic() + WATCH_SECONDS
        while time.monotonic() < watch_until:
            title = f"while full {len(refused)}"
            status, body, seconds = open_thread(server, title)
            assert status == 503 and body["error"]["code"] == "storage_unavailable", body
            assert body["error"]["message"].startswith(f"disk full: {db} ("), body
            assert seconds < REFUSAL_BOUND_SECONDS, f"refused after {seconds:.2f}s"
            refused.append(title)
            now = health(server)
            assert now["status"] == "degraded" and now["reason"] == f"disk full: {db}", now
            assert now["actors"]["restarts_total"] == restarts, now
            assert now["actors"]["alive"] == now["actors"]["total"], now
            assert entries_added(redis_url, redis_namespace) == added
        status, listed = call(server.url + "/api/v1/forum/threads?ticket=DISK-1&limit=200")
        assert status == 200, listed  # reads keep working

        filler.unlink()  # space returns: the relay's probe clears the fault by itself
        wait_until(lambda: health(server)["status"] == "ok", timeout=20,
                   message="health did not return to ok after space returned")
        for i in range(5):
            status, body, _ = open_thread(server, f"after {i}")
            assert status == 200, body
            acknowledged.append(f"after {i}")

        # Everything acknowledged is there once (a write accepted just before the disk filled
        # waited for the disk to apply); nothing refused was written.
        def all_applied() -> bool:
            counts = count_titles(db, acknowledged)
            assert all(n <= 1 for n in counts.values()), counts
            return all(n == 1 for n in counts.values())

        wait_until(all_applied, timeout=20, message="an acknowledged write is missing")
        assert set(count_titles(db, refused).values()) == {0}
        final = health(server)
        assert final["actors"]["restarts_total"] == restarts, final
        log = server.log()
        assert "gave up" not in log and "Traceback" not in log, log
    finally:
        assert server.stop() == 0, server.log()


def test_only_persistent_write_errors_are_storage_faults(tmp_path: Path) -> None:
    """What the daemon treats as "the database cannot be written" (no mount needed)."""
    db = tmp_path / "metawsm.db"
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as read_only:
        reader.execute("INSERT INTO t VALUES (1)")
    fault = classify(read_only.value, db)
    assert fault is not None and fault.reason == f"{READ_ONLY}: {db.resolve()}", fault

    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    writer.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        other.execute("BEGIN IMMEDIATE")
    writer.execute("ROLLBACK")
    assert classify(locked.value, db) is None  # a lock passes by itself: not a fault
    for conn in (writer, reader, other):
        conn.close()

    full = classify(OSError(errno.ENOSPC, "No space left on device"), db)
    assert full is not None and full.kind == DISK_FULL and full.reason == f"disk full: {db.resolve()}"
    assert classify(ValueError("a bug"), db) is None

    status = StorageStatus(db)
    assert status.report(ValueError("a bug")) is None and status.fault is None
    assert status.report(OSError(errno.ENOSPC, "No space left on device")) is not None
    assert status.fault is not None and status.faults_total == 1
    status.report(OSError(errno.ENOSPC, "again"))  # the first fault stands until a probe clears it
    assert status.faults_total == 1 and status.fault.error.endswith("No space left on device")
    assert status.clear() is not None and status.fault is None
