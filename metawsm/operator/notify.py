"""Notifications of operator decisions: ``operator.notify_command`` and ``operator.webhook_url``.

The operator actor must never wait on a notification: a desktop notifier that hangs or a
webhook behind a slow network would delay every later decision.  :class:`Notifier` therefore
hands each decision to one worker thread, which runs the command and posts the webhook in the
order the decisions were taken.

A broken notifier tends to fail the same way for every decision, so each distinct error text is
logged once; a fixed notifier that breaks differently is reported again.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from http.client import HTTPException
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import msgspec

from metawsm.operator.model import Decision

if TYPE_CHECKING:
    from metawsm.policy import OperatorPolicy

__all__ = ["Notifier", "notify_env", "run_command"]

log = logging.getLogger("metawsm.operator")

# Retries of a failed webhook: quick enough for a receiver that restarts, capped so that a long
# outage costs one attempt every few seconds at most.
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 5.0
# Past this many distinct errors the oldest is forgotten, so a notifier whose error text changes
# every time (a timestamp in its stderr) cannot grow the memory without bound.
_REMEMBERED_ERRORS = 256
_ERROR_TEXT_MAX = 200


def notify_env(event: str, message: str, run_id: str, run_status: str, tickets: Sequence[str]) -> dict[str, str]:
    """The variables a notify command reads (the same names as the Go version's watch loop)."""
    return {
        "METAWSM_EVENT": event,
        "METAWSM_MESSAGE": message,
        "METAWSM_RUN_ID": run_id,
        "METAWSM_RUN_STATUS": run_status,
        "METAWSM_TICKETS": ",".join(tickets),
    }


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _first_line(data: bytes) -> str:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.strip():
            return line.strip()[:_ERROR_TEXT_MAX]
    return ""


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    # The command may be a script whose children keep stderr open; killing only the script
    # would leave communicate() waiting for them.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def run_command(argv: Sequence[str], extra_env: Mapping[str, str], timeout: float) -> str | None:
    """Run ``argv`` without a shell; ``None`` on success, else a one-line reason.

    stdin is closed and stdout discarded, so a command that reads or chatters cannot block;
    stderr is kept for the first line of the reason.  At the timeout the process and everything
    it started are killed.
    """
    if not argv or not argv[0].strip():
        return "no command to run"
    program = argv[0]
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**os.environ, **extra_env},
                                start_new_session=True)
    except FileNotFoundError:
        return f"not found: {program}"
    except OSError as exc:
        return f"cannot run {program}: {exc.strerror or exc}"
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        return f"timed out after {_seconds(timeout)}"
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        reason = f"killed by signal {-proc.returncode}"
    else:
        reason = f"exited with status {proc.returncode}"
    detail = _first_line(stderr)
    return f"{reason}: {detail}" if detail else reason


def _where(url: str) -> str:
    """Scheme, host and port only: a webhook URL often carries its secret in the path or query."""
    parts = urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A proxy from the environment can only mis-route a webhook on this machine (the proxy
    # would reach its own loopback); remote receivers keep the environment's proxy settings.
    if _is_loopback(urlsplit(url.strip()).hostname):
        return urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener()


class Notifier:
    """Runs the notify command and posts the webhook for each decision, on a worker thread."""

    def __init__(self, policy: OperatorPolicy) -> None:
        self._command = list(policy.notify_command)
        self._command_timeout = float(policy.notify_timeout_seconds)
        self._url = policy.webhook_url.strip()
        self._attempts = max(1, policy.webhook_attempts)
        self._webhook_timeout = float(policy.webhook_timeout_seconds)
        self._queue: queue.SimpleQueue[Decision | None] = queue.SimpleQueue()
        # Set by close(): backoff waits end at once and no more retries are started.
        self._closing = threading.Event()
        self._errors: dict[str, None] = {}  # insertion-ordered set of the texts already logged
        self._thread: threading.Thread | None = None
        if self._command or self._url:
            self._thread = threading.Thread(target=self._work, name="operator-notify", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def notify(self, decision: Decision) -> None:
        """Queue the decision's notifications; returns at once."""
        if self._thread is None or self._closing.is_set():
            return
        self._queue.put(decision)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (without retrying failures any more), then stop the worker."""
        if self._thread is None:
            return
        if not self._closing.is_set():
            self._closing.set()
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("operator: notifications still running after %s; left behind", _seconds(timeout))

    # ------------------------------------------------------------------ worker thread

    def _work(self) -> None:
        while True:
            decision = self._queue.get()
            if decision is None:
                return
            try:
                self._deliver(decision)
            except Exception:  # one bad decision must not end notifications for the rest
                log.exception("operator: notifying decision %s of run %s failed", decision.intent, decision.run_id)

    def _deliver(self, decision: Decision) -> None:
        if self._command:
            env = notify_env(decision.intent, decision.reason, decision.run_id, decision.run_status,
                             decision.tickets)
            error = run_command(self._command, env, self._command_timeout)
            if error is not None:
                self._warn_once(f"operator: notify command {self._command[0]} failed: {error}")
        if self._url:
            self._post(msgspec.json.encode(decision))

    def _post(self, body: bytes) -> None:
        delay = BACKOFF_FIRST
        error = ""
        for attempt in range(1, self._attempts + 1):
            error, retry = self._post_once(body)
            if not error:
                return
            if not retry:
                self._warn_once(f"operator: webhook {_where(self._url)} refused the decision: {error}")
                return
            if attempt == self._attempts or self._closing.wait(delay):
                break
            delay = min(delay * 2, BACKOFF_CAP)
        self._warn_once(f"operator: webhook {_where(self._url)} gave up after {attempt} attempt(s): {error}")

    def _post_once(self, body: bytes) -> tuple[str, bool]:
        """``("", _)`` when delivered, else the error and whether another attempt may help."""
        request = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "metawsm-operator"})
        try:
            with _opener(self._url).open(request, timeout=self._webhook_timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            # 4xx: the receiver understood and said no; the same body will be refused again.
            return f"HTTP {exc.code}", exc.code >= 500
        except urllib.error.URLError as exc:
            return str(exc.reason), True
        except (OSError, HTTPException) as exc:  # timeouts, resets, malformed answers
            return str(exc) or type(exc).__name__, True
        return "", False

    def _warn_once(self, text: str) -> None:
        if text in self._errors:
            return
        self._errors[text] = None
        if len(self._errors) > _REMEMBERED_ERRORS:
            del self._errors[next(iter(self._errors))]
        log.warning("%s", text)
