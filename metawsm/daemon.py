"""Assembling and running the daemon's actor system (used by ``metawsm serve`` and tests).

Start-up order: validate the policy, lock the database (:mod:`metawsm.daemon_lock`: one
daemon per database), open and migrate it, find a usable Redis (the configured one, or a
private one per ``forum.redis.embedded``), claim the stream namespace, then start the actor
tree.  Each step fails fast with one readable message (:class:`StartupError`), before any
actor runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import redis

from metawsm.actors.forum.tree import forum_supervisor_spec
from metawsm.actors.operator.actor import Operator
from metawsm.actors.operator.sink import OperatorSink
from metawsm.actors.redis_server import RedisServer
from metawsm.actors.runs.sink import RunsSink
from metawsm.actors.runs.supervisor import RunSupervisor
from metawsm.actors.supervisor import ChildSpec, Strategy, Supervisor
from metawsm.actors.system import ActorSystem
from metawsm.auth.tokens import TokenRegistry, new_operator_token
from metawsm.daemon_lock import DatabaseLock, DatabaseLockError
from metawsm.policy import ForumRedis, Policy, redacted_redis_url
from metawsm.services import Services
from metawsm.store import Database, StoreError
from metawsm.transport.namespace import NamespaceClaim, NamespaceTaken
from metawsm.transport.redis_process import RedisProcess, RedisStartError, redis_server_available
from metawsm.transport.streams import TransportError

log = logging.getLogger("metawsm.daemon")

MAX_SOCKET_PATH = 100


class StartupError(Exception):
    """The daemon cannot start; the message is the one line to show the operator."""


REDIS_URL_ENV = "METAWSM_REDIS_URL"
REDIS_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisSetting:
    """The Redis URL to try and where it came from (flag > environment > policy > default)."""

    url: str
    source: str  # "--redis-url", "METAWSM_REDIS_URL", "policy forum.redis.url" or "default forum.redis.url"

    @property
    def explicit(self) -> bool:
        """Named on the command line or in the environment: never swapped for a private Redis."""
        return self.source in ("--redis-url", REDIS_URL_ENV)


def redis_setting(policy: Policy, flag: str | None = None, environ: Mapping[str, str] | None = None) -> RedisSetting:
    """Pick the Redis URL by precedence; a URL that is not a Redis URL raises ``ValueError``."""
    env = os.environ if environ is None else environ
    if flag is not None and flag.strip():
        setting = RedisSetting(flag.strip(), "--redis-url")
    elif env.get(REDIS_URL_ENV, "").strip():
        setting = RedisSetting(env[REDIS_URL_ENV].strip(), REDIS_URL_ENV)
    else:
        url = policy.forum.redis.url.strip()
        default = url == ForumRedis().url
        return RedisSetting(url, "default forum.redis.url" if default else "policy forum.redis.url")
    scheme = setting.url.partition("://")[0].lower() if "://" in setting.url else ""
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"{setting.source} {redacted_redis_url(setting.url)!r} is not a Redis URL "
                         "(expected redis://HOST:PORT/DB, rediss://... or unix:///path/to/socket)")
    return setting


@dataclass
class RedisChoice:
    url: str
    process: RedisProcess | None
    # One line for the log and /health: which Redis, and why that one.
    reason: str = ""

    @property
    def mode(self) -> str:
        return "embedded" if self.process is not None else "external"


def ping_redis(url: str, timeout: float = 1.0) -> str | None:
    """Return None if Redis answers at ``url``, else the reason it does not."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def embedded_redis_process(db_path: Path) -> RedisProcess:
    """A private redis-server with its socket and append-only file under ``<db dir>/redis``."""
    data_dir = db_path.parent / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / "redis.sock"
    if len(os.fsencode(socket_path.absolute())) > MAX_SOCKET_PATH:
        digest = hashlib.sha1(str(data_dir.absolute()).encode()).hexdigest()[:12]
        socket_path = Path("/tmp") / f"metawsm-redis-{digest}.sock"
    return RedisProcess(data_dir=data_dir, unix_socket=socket_path, appendonly=True)


def choose_redis(policy: Policy, db_path: Path, setting: RedisSetting | None = None) -> RedisChoice:
    """The Redis this daemon uses: the configured one if it answers, else (``embedded: auto``)
    a private one.  A URL given explicitly (flag or environment) is used or refused, never
    silently replaced."""
    setting = setting or redis_setting(policy, environ={})
    mode = policy.forum.redis.embedded
    url = setting.url
    shown = redacted_redis_url(url)
    why_private = "forum.redis.embedded is always"
    if mode != "always" or setting.explicit:
        no_fallback = mode == "never" or setting.explicit or not redis_server_available()
        if not url:
            if no_fallback:
                raise StartupError("forum redis url is empty")
            why_private = "forum.redis.url is empty"
        else:
            reason = ping_redis(url)
            if reason is None:
                return RedisChoice(url, None, f"{shown} from {setting.source} answered")
            if no_fallback:
                fix = f"or fix {setting.source}" if setting.explicit else "or fix forum.redis.url"
                raise StartupError(
                    f"forum redis ping failed: {reason}; start Redis (redis-server --port 6379) {fix}"
                )
            why_private = f"{shown} from {setting.source} did not answer ({reason})"
            log.info("redis at %s did not answer (%s); starting a private redis-server", shown, reason)
    process = embedded_redis_process(db_path)
    try:
        process.start()
    except (RedisStartError, OSError) as error:
        raise StartupError(f"forum redis ping failed: embedded redis-server did not start: {error}") from error
    log.info("embedded redis at %s (data in %s)", process.url, process.data_dir)
    return RedisChoice(process.url, process, f"private redis-server started: {why_private}")


class Daemon:
    """One actor system serving one database."""

    def __init__(
        self,
        policy: Policy,
        db_path: str | Path,
        *,
        debug: bool = False,
        policy_path: str = "",
        server_url: str = "http://127.0.0.1:3001",
        base_dir: str | Path | None = None,
        redis: RedisSetting | None = None,
        operator_token: str | None = None,
        auth_enabled: bool = True,
        db_lock: DatabaseLock | None = None,
    ) -> None:
        self.policy = policy
        self.policy_path = str(Path(policy_path).absolute()) if policy_path else ""
        self.server_url = server_url
        self.base_dir = str(Path(base_dir or Path.cwd()).absolute())
        self.db_path = Path(db_path).absolute()
        self.debug = debug
        self.redis_setting = redis or redis_setting(policy, environ={})
        # In-process daemons (tests, benchmarks) need no token file: a random token nobody knows.
        self.operator_token = operator_token or new_operator_token()
        self.auth_enabled = auth_enabled
        self.system: ActorSystem | None = None
        self.services: Services | None = None
        self.redis: RedisChoice | None = None
        self.claim: NamespaceClaim | None = None
        # ``serve`` locks the database before anything else and hands the lock over; an
        # in-process daemon (tests, benchmarks) takes it in start().  Released by stop().
        self.db_lock = db_lock

    def start(self) -> ActorSystem:
        if self.db_lock is None or not self.db_lock.held:
            try:
                self.db_lock = DatabaseLock.acquire(self.db_path, self.server_url)
            except DatabaseLockError as error:
                raise StartupError(str(error)) from error
        try:
            return self._start()
        except BaseException:
            if self.system is None:  # nothing runs: a retry (or another daemon) may take it
                self._release_lock()
            raise

    def _start(self) -> ActorSystem:
        db = Database(str(self.db_path))
        try:
            db.migrate()
        except StoreError as error:
            raise StartupError(str(error)) from error
        self.redis = choose_redis(self.policy, self.db_path, self.redis_setting)
        log.info("redis: %s (%s)", redacted_redis_url(self.redis.url), self.redis.reason)
        try:
            # We hold the database lock, so a record of this database is a dead predecessor's.
            self.claim = NamespaceClaim(self.redis.url, self.policy.forum.redis.stream, self.db_path,
                                        holds_database_lock=True)
            self.claim.claim()
        except NamespaceTaken as error:
            self._stop_redis()
            raise StartupError(str(error)) from error
        except TransportError as error:
            self._stop_redis()
            raise StartupError(f"forum redis ping failed: {error}") from error
        services = Services(db=db, policy=self.policy, redis_url=self.redis.url, debug=self.debug,
                            policy_path=self.policy_path, server_url=self.server_url, base_dir=self.base_dir)
        services.tokens = TokenRegistry(db, self.operator_token)
        services.auth_enabled = self.auth_enabled
        services.embedded_redis = self.redis.process
        services.bus.redis_reason = self.redis.reason
        services.bus.redis_mode = self.redis.mode
        services.namespace_claim = self.claim
        self.services = services
        system = ActorSystem(self.policy.supervision, services)
        children: list[ChildSpec] = []
        if self.redis.process is not None:
            children.append(ChildSpec.of(RedisServer, id="redis", name="RedisServer", shutdown_timeout=10))
        children.append(forum_supervisor_spec())
        children.append(ChildSpec.of(RunSupervisor, id="runs", name="RunSupervisor", shutdown_timeout=30))
        children.append(ChildSpec.of(Operator, id="operator", name="Operator"))
        services.sinks.add(RunsSink(system))
        services.sinks.add(OperatorSink(system))
        system.start(ChildSpec.of(Supervisor, id="root", name="RootSupervisor", strategy=Strategy.ONE_FOR_ONE,
                                  children=children))
        self.system = system
        log.info("metawsm started: db %s, redis %s", self.db_path, redacted_redis_url(self.redis.url))
        return system

    def stop(self) -> None:
        if self.system is not None:
            self.system.stop()
        if self.claim is not None:
            try:
                self.claim.release()
            except TransportError:
                pass
            self.claim.close()
        self._stop_redis()
        self._release_lock()  # last: until everything above is stopped, this daemon owns the database

    def _release_lock(self) -> None:
        if self.db_lock is not None:
            self.db_lock.release()

    def _stop_redis(self) -> None:
        if self.redis is not None and self.redis.process is not None:
            self.redis.process.stop()
