"""Running the daemon: actor system plus aiohttp on one asyncio loop, until a signal or a failure."""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from metawsm.actors.forum.bus import consumed_topics, open_bus
from metawsm.api.app import build_app
from metawsm.api.context import ApiContext
from metawsm.api.metrics import Metrics
from metawsm.api.security import Exposure, is_loopback
from metawsm.api.stream import StreamHub
from metawsm.daemon import Daemon
from metawsm.forum.service import ForumService
from metawsm.runs.service import RunsService

log = logging.getLogger("metawsm.serve")

ROOT_FAILED_EXIT = 3
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """``HOST:PORT``; an empty host (``:3001``) means loopback, not every interface."""
        host, sep, port = text.strip().rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'invalid --addr "{text}": expected HOST:PORT, e.g. 127.0.0.1:3001')
        host = host.strip("[]") or "127.0.0.1"
        return cls(host, int(port))

    @property
    def url(self) -> str:
        """How this machine reaches the daemon (agents get it as METAWSM_SERVER): a wildcard bind
        is reached through loopback, a name the Host check accepts."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return is_loopback(self.host)


async def serve_forever(daemon: Daemon, address: Address, fault_injection: bool, *, token_file: str = "",
                        on_listening: Callable[[], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or until the root supervisor gives up (non-zero)."""
    system, services = daemon.system, daemon.services
    assert system is not None and services is not None
    loop = asyncio.get_running_loop()
    forum = ForumService(system, services)
    hub = StreamHub(forum, loop, float(services.policy.forum.heartbeat_seconds))
    debug_bus = open_bus(services, "api")
    topics = consumed_topics(services)
    runs = RunsService(system, services)
    ctx = ApiContext(system=system, services=services, forum=forum, metrics=Metrics(), hub=hub, runs=runs,
                     fault_injection=fault_injection)
    ctx.extra["describe_topics"] = debug_bus.describe_topics
    ctx.extra["stream_pending"] = lambda: debug_bus.pending_count(topics)
    await hub.start()
    services.sinks.add(hub)
    services.decisions.add(hub.decision_made)
    api = services.policy.api
    exposure = Exposure.build(address.host, address.port, api.allowed_hosts, api.allowed_origins)
    app = build_app(ctx, exposure, token_file=token_file)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port, reuse_address=True)
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        services.sinks.remove(hub)
        services.decisions.remove(hub.decision_made)
        forum.close()
        runs.close()
        debug_bus.close()
        if error.errno == errno.EADDRINUSE:
            reason = "address already in use (another metawsm serve?); pick another --addr HOST:PORT"
        else:
            reason = (error.strerror or str(error)).lower()
        raise StartupFailed(f"cannot listen on {address.host}:{address.port}: {reason}") from error
    log.info("serving the API on %s (fault injection %s)", address.url, "on" if fault_injection else "off")
    if on_listening is not None:
        on_listening()

    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    failed = loop.run_in_executor(None, system.failed.wait)
    stopper = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {stopper, failed}
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    if failed in done:
        failure = system.failure
        reason = failure.message if failure else "unknown"
        # The root giving up, or a cause no restart can cure (ActorSystem.fail: a lost namespace claim).
        gave_up = failure is None or failure.type == "SupervisorGaveUp"
        what = "the root supervisor gave up" if gave_up else "the daemon cannot go on"
        log.error("%s (%s); health reports failed, exiting", what, reason)
        exit_code = ROOT_FAILED_EXIT
        await asyncio.sleep(DRAIN_SECONDS)  # let health pollers see "failed" before we go
    else:
        log.info("stopping: draining actors and closing connections")
        system.failed.set()  # releases the executor thread waiting on it
        system.failure = None
    stopper.cancel()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
    await hub.stop()
    services.sinks.remove(hub)
    services.decisions.remove(hub.decision_made)
    await runner.cleanup()
    await loop.run_in_executor(None, daemon.stop)
    forum.close()
    runs.close()
    debug_bus.close()
    log.info("stopped")
    return exit_code


class StartupFailed(Exception):
    pass
