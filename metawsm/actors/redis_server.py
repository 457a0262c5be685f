"""RedisServer: supervises the daemon's private ``redis-server`` (policy ``forum.redis.embedded``).

The process object lives in the services so it outlives an actor restart; the actor checks
every second that the process is alive and crashes if it is not, so its supervisor restarts
it and ``setup`` starts Redis again on the same socket with the same append-only file.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import msgspec

from metawsm.actors.managed import ManagedActor

log = logging.getLogger("metawsm.redis")

CHECK_SECONDS = 1.0


class _Check(msgspec.Struct, frozen=True):
    """The actor's own once-a-second liveness check of the process."""


# A single tell: _Check, the actor's own.
RedisServerMessage = _Check


class RedisServerGone(RuntimeError):
    pass


class RedisServer(ManagedActor):
    kind: ClassVar[str] = "redis"

    def setup(self) -> None:
        self.process = self.system.services.embedded_redis
        if not self.process.is_running():
            self.process.start()
            log.info("embedded redis started at %s (pid %s)", self.process.url, self.process.pid)
        self.tell_self_every(CHECK_SECONDS, _Check())

    def handle(self, message: Any) -> Any:
        match message:
            case _Check():
                if not self.process.is_running():
                    raise RedisServerGone(f"embedded redis-server (pid {self.process.pid}) exited")
                return None
            case _:
                return super().handle(message)

    def describe(self) -> dict[str, Any]:
        return {"url": self.process.url, "pid": self.process.pid, "log": str(self.process.log_path)}
