"""Running the real daemon in tests: in-process (actors + ForumService) or as `metawsm serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metawsm.daemon import Daemon
from metawsm.forum.service import ForumService
from metawsm.policy import Policy, policy_from_mapping
from metawsm.transport.redis_process import free_tcp_port
from metawsm.waiting import wait_until


def policy_data(redis_url: str, stream: str, **forum: Any) -> dict[str, Any]:
    """Policy dict for tests: the given Redis, its own stream namespace, no embedded Redis."""
    forum_section: dict[str, Any] = {
        "redis": {"url": redis_url, "stream": stream, "group": stream, "embedded": "never"},
        "heartbeat_seconds": 1,
    }
    forum_section.update(forum)
    # A private tmux server per test daemon, so runs started by a test never touch the user's.
    return {"forum": forum_section, "supervision": {"max_restarts": 50, "within_seconds": 10},
            "tmux": {"socket": f"mw-{stream}"}}


def make_policy(redis_url: str, stream: str, **forum: Any) -> Policy:
    return policy_from_mapping(policy_data(redis_url, stream, **forum))


class InProcessDaemon:
    """The actor system and a ForumService in this process (for pipeline tests)."""

    def __init__(self, policy: Policy, db_path: Path) -> None:
        self.daemon = Daemon(policy, db_path)
        self.system = self.daemon.start()
        self.services = self.daemon.services
        self.forum = ForumService(self.system, self.services)

    def stop(self) -> None:
        self.forum.close()
        self.daemon.stop()


class ServeProcess:
    """A real ``metawsm serve`` subprocess on a free port, with its own DB and policy files."""

    def __init__(self, workdir: Path, policy: dict[str, Any], debug: bool = True, port: int | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.db_path = workdir / ".metawsm" / "metawsm.db"
        self.policy_path = workdir / ".metawsm" / "policy.json"
        self.policy_path.parent.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(json.dumps(policy))
        self.port = port or free_tcp_port()
        self.debug = debug
        self.extra_args = extra_args
        self.env = env or {}
        self.log_path = workdir / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "metawsm", "serve", "--addr", f"127.0.0.1:{self.port}",
                "--db", str(self.db_path), "--policy", str(self.policy_path)]
        return argv + (["--debug"] if self.debug else []) + list(self.extra_args)

    def spawn(self) -> None:
        """Start the process without waiting for it (its output is appended to ``log_path``)."""
        self.starts += 1
        with open(self.log_path, "ab") as log:
            env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
            self.process = subprocess.Popen(self.argv(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            env=env)

    def start(self, timeout: float = 20.0) -> ServeProcess:
        self.spawn()
        wait_until(self._ready, timeout=timeout, message=f"metawsm serve on {self.url} did not become ready; log:\n"
                   + "see " + str(self.log_path))
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"metawsm serve exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> ServeProcess:
        self.stop()
        return self.start()


@contextmanager
def serving(redis_url: str, directory: Path, **policy_sections: Any) -> Iterator[ServeProcess]:
    """A ``metawsm serve`` on its own database and stream namespace (a module's shared daemon);
    ``policy_sections`` replace whole sections of the test policy (``api={...}``).  On exit
    it stops the daemon and deletes its Redis keys."""
    from support.processes import short_id, unlink_prefix

    namespace = f"t{short_id()}"
    process = ServeProcess(directory, {**policy_data(redis_url, namespace), **policy_sections})
    try:
        yield process.start()
    finally:
        process.stop()
        unlink_prefix(redis_url, namespace)
