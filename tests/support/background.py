"""A ``metawsm`` command running in the background (a follower: ``operator``, ``watch``), its
stdout and stderr read line by line on threads so a test can wait for what it prints."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Any

from metawsm.waiting import wait_until


class BackgroundCli:
    def __init__(self, env: Any, *args: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "metawsm", *args], cwd=env.repo, env=env.cli_env(),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, encoding="utf-8")
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._pump, args=(self.process.stdout, self.out), daemon=True),
                         threading.Thread(target=self._pump, args=(self.process.stderr, self.err), daemon=True)]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def wait_for(self, predicate: Any, what: str, timeout: float = 30.0) -> Any:
        """Wait for ``predicate``; fail at once if the command exits first."""

        def check() -> Any:
            found = predicate()
            if not found and self.process.poll() is not None:
                raise AssertionError(f"exited with {self.process.returncode} before {what}: {self.out} {self.err}")
            return found

        return wait_until(check, timeout=timeout, interval=0.02, message=f"{what}; out={self.out} err={self.err}")

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the command to end by itself; its exit code."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        self.process.send_signal(sig)
        return self.finish(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
