"""Notifications of operator decisions (metawsm/operator/notify.py): the notify command, with real
processes, and the webhook, against a real HTTP server on the loopback interface."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metawsm.operator.model import Decision
from metawsm.operator.notify import Notifier, notify_env, run_command
from metawsm.policy import OperatorPolicy, policy_from_mapping
from metawsm.waiting import wait_until

ENV_KEYS = ("METAWSM_EVENT", "METAWSM_MESSAGE", "METAWSM_RUN_ID", "METAWSM_RUN_STATUS", "METAWSM_TICKETS")


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}", encoding="utf-8")
    path.chmod(0o755)
    return path


def operator_policy(**fields: Any) -> OperatorPolicy:
    return policy_from_mapping({"operator": fields}).operator


def decision(cause: str = "c1", **fields: Any) -> Decision:
    values: dict[str, Any] = {"run_id": "run-1", "intent": "escalate_guidance",
                              "reason": "guidance request waited 3s", "cause": cause,
                              "run_status": "running", "tickets": ["T-1", "T-2"], **fields}
    return Decision(**values)


def gone(pid: int) -> bool:
    """The process has exited (absent, or a zombie nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def read_lines(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def notifiers() -> Iterator[list[Notifier]]:
    """Notifiers made by a test, closed even when it fails."""
    made: list[Notifier] = []
    yield made
    for notifier in made:
        notifier.close(timeout=5)


# --------------------------------------------------------------------------- the command


ENV_RECORDER = """\
import json, os, sys
keys = {keys!r}
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({{k: os.environ.get(k) for k in keys}}) + "\\n")
"""


def test_notify_env_names_the_decision() -> None:
    assert notify_env("escalate_blocked", "budget spent", "r9", "running", ["A", "B"]) == {
        "METAWSM_EVENT": "escalate_blocked", "METAWSM_MESSAGE": "budget spent", "METAWSM_RUN_ID": "r9",
        "METAWSM_RUN_STATUS": "running", "METAWSM_TICKETS": "A,B"}


def test_the_command_gets_each_decision_once_with_its_environment(
        tmp_path: Path, notifiers: list[Notifier]) -> None:
    record = tmp_path / "calls.jsonl"
    command = script(tmp_path, "record.py", ENV_RECORDER.format(keys=ENV_KEYS))
    notifier = Notifier(operator_policy(notify_command=[str(command), str(record)]))
    notifiers.append(notifier)
    notifier.notify(decision("c1"))
    notifier.notify(decision("c2", intent="escalate_blocked", reason="restart budget exhausted (3/3)",
                             run_id="run-2", run_status="failed", tickets=["T-9"]))
    wait_until(lambda: len(read_lines(record)) >= 2, timeout=10)
    notifier.close()
    assert read_lines(record) == [
        {"METAWSM_EVENT": "escalate_guidance", "METAWSM_MESSAGE": "guidance request waited 3s",
         "METAWSM_RUN_ID": "run-1", "METAWSM_RUN_STATUS": "running", "METAWSM_TICKETS": "T-1,T-2"},
        {"METAWSM_EVENT": "escalate_blocked", "METAWSM_MESSAGE": "restart budget exhausted (3/3)",
         "METAWSM_RUN_ID": "run-2", "METAWSM_RUN_STATUS": "failed", "METAWSM_TICKETS": "T-9"},
    ]


def test_notify_returns_while_the_command_is_still_running(tmp_path: Path, notifiers: list[Notifier]) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    done = tmp_path / "done"
    # Opening a FIFO for reading blocks until the test opens it for writing.
    command = script(tmp_path, "blocked.py", "import sys\nopen(sys.argv[1]).read()\nopen(sys.argv[2], 'w').close()\n")
    notifier = Notifier(operator_policy(notify_command=[str(command), str(gate), str(done)],
                                        notify_timeout_seconds=30))
    notifiers.append(notifier)
    started = time.monotonic()
    notifier.notify(decision())
    assert time.monotonic() - started < 0.5
    assert not done.exists()
    with open(gate, "w") as writer:  # releases the command
        writer.write("go")
    wait_until(done.exists, timeout=10)


def test_a_failing_command_is_logged_once_per_distinct_error(
        tmp_path: Path, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture) -> None:
    record = tmp_path / "calls"
    command = script(tmp_path, "fail.py", "import sys\nopen(sys.argv[1], 'a').write('x')\n"
                                          "sys.stderr.write('\\nboom: no display\\nmore\\n')\nsys.exit(3)\n")
    caplog.set_level(logging.WARNING, logger="metawsm.operator")
    notifier = Notifier(operator_policy(notify_command=[str(command), str(record)]))
    notifiers.append(notifier)
    notifier.notify(decision("c1"))
    notifier.notify(decision("c2"))
    notifier.close(timeout=10)
    assert record.read_text() == "xx"  # it ran for both decisions
    warnings = [r.getMessage() for r in caplog.records if r.name == "metawsm.operator"]
    assert warnings == [f"operator: notify command {command} failed: exited with status 3: boom: no display"]


def test_run_command_reports_a_missing_program_and_passes_the_environment(tmp_path: Path) -> None:
    assert run_command([str(tmp_path / "nope")], {}, 5) == f"not found: {tmp_path / 'nope'}"
    out = tmp_path / "out"
    command = script(tmp_path, "env.py", "import os, sys\nopen(sys.argv[1], 'w').write(os.environ['X_TEST'] + "
                                         "os.environ['PATH'][:1])\n")
    assert run_command([str(command), str(out)], {"X_TEST": "hello"}, 5) is None
    assert out.read_text() == "hello" + os.environ["PATH"][:1]  # the daemon's environment, plus the extra


def test_a_command_that_outlives_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = script(tmp_path, "hang.py", f"""\
import os, signal, subprocess, sys
child = subprocess.Popen([{sys.executable!r}, "-c", "import signal; signal.pause()"])
open(sys.argv[1], "w").write(f"{{os.getpid()}} {{child.pid}}")
signal.pause()
""")
    started = time.monotonic()
    assert run_command([str(command), str(pids)], {}, 0.5) == "timed out after 0.5s"
    assert time.monotonic() - started < 5
    parent, child = map(int, pids.read_text().split())
    wait_until(lambda: gone(parent) and gone(child), timeout=5)


# --------------------------------------------------------------------------- the webhook


HANG_UP = 0  # a "status" for the receiver: close the connection without answering


class Receiver:
    """A loopback HTTP server that records each POST and answers with the next queued status."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.statuses: list[int] = []
        self.default = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((self.path, self.headers.get("Content-Type", ""), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                if status == HANG_UP:
                    self.close_connection = True
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keeps the test output clean; the requests are recorded above

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def bodies(self) -> list[Any]:
        with self.lock:
            return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_the_webhook_is_retried_after_a_5xx_until_it_is_delivered(
        receiver: Receiver, notifiers: list[Notifier]) -> None:
    receiver.statuses = [500, 503]
    notifier = Notifier(operator_policy(webhook_url=receiver.url, webhook_attempts=5))
    notifiers.append(notifier)
    sent = decision()
    notifier.notify(sent)
    wait_until(lambda: receiver.count() >= 3, timeout=10)
    notifier.close()
    assert receiver.count() == 3
    assert receiver.bodies() == [msgspec.to_builtins(sent)] * 3
    path, content_type, _ = receiver.requests[0]
    assert (path, content_type) == ("/hooks/secret-token", "application/json")


def test_a_4xx_is_not_retried_and_is_logged_without_the_urls_secret(
        receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [404]
    caplog.set_level(logging.WARNING, logger="metawsm.operator")
    notifier = Notifier(operator_policy(webhook_url=receiver.url, webhook_attempts=5))
    notifiers.append(notifier)
    notifier.notify(decision("c1"))
    notifier.notify(decision("c2"))
    # A retry of the refused decision would arrive before the second one.
    wait_until(lambda: receiver.count() >= 2, timeout=10)
    notifier.close()
    assert [body["cause"] for body in receiver.bodies()] == ["c1", "c2"]
    port = receiver.server.server_address[1]
    assert [r.getMessage() for r in caplog.records if r.name == "metawsm.operator"] == [
        f"operator: webhook http://127.0.0.1:{port} refused the decision: HTTP 404"]


def test_a_webhook_that_hangs_up_gives_up_after_its_attempts_and_says_so_once(
        receiver: Receiver, notifiers: list[Notifier], caplog: pytest.LogCaptureFixture) -> None:
    receiver.default = HANG_UP
    caplog.set_level(logging.WARNING, logger="metawsm.operator")
    notifier = Notifier(operator_policy(webhook_url=receiver.url, webhook_attempts=2))
    notifiers.append(notifier)
    notifier.notify(decision("c1"))
    notifier.notify(decision("c2"))
    wait_until(lambda: receiver.count() >= 4, timeout=10)
    notifier.close(timeout=10)
    assert [body["cause"] for body in receiver.bodies()] == ["c1", "c1", "c2", "c2"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "metawsm.operator"]
    port = receiver.server.server_address[1]
    assert warnings == [f"operator: webhook http://127.0.0.1:{port} gave up after 2 attempt(s): "
                        "Remote end closed connection without response"]


def test_an_unreachable_webhook_is_reported(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    url = receiver.url
    receiver.close()  # nothing listens on the port any more: connection refused
    caplog.set_level(logging.WARNING, logger="metawsm.operator")
    notifier = Notifier(operator_policy(webhook_url=url, webhook_attempts=1))
    notifier.notify(decision())
    notifier.close(timeout=10)
    warnings = [r.getMessage() for r in caplog.records if r.name == "metawsm.operator"]
    assert len(warnings) == 1 and "gave up after 1 attempt(s)" in warnings[0] and "refused" in warnings[0]
    assert "secret-token" not in warnings[0]


def test_close_interrupts_the_backoff(receiver: Receiver, notifiers: list[Notifier],
                                      caplog: pytest.LogCaptureFixture) -> None:
    receiver.default = 503
    caplog.set_level(logging.WARNING, logger="metawsm.operator")
    # Twenty attempts would take about a minute of backoff.
    notifier = Notifier(operator_policy(webhook_url=receiver.url, webhook_attempts=20))
    notifiers.append(notifier)
    notifier.notify(decision())
    wait_until(lambda: receiver.count() >= 1, timeout=10)
    started = time.monotonic()
    notifier.close(timeout=10)
    assert time.monotonic() - started < 2
    assert receiver.count() <= 2
    assert any("gave up after" in r.getMessage() and "HTTP 503" in r.getMessage() for r in caplog.records)
    notifier.notify(decision("after-close"))  # ignored, not queued for a worker that is gone
    assert receiver.count() <= 2


def test_a_policy_without_command_or_webhook_starts_no_worker() -> None:
    notifier = Notifier(operator_policy())
    assert not notifier.enabled
    notifier.notify(decision())
    notifier.close()
