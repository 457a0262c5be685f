"""Fixtures for tests that need real Redis and tmux (no fakes, no mocks).

* ``redis_server`` — one shared Redis per session (TCP, no persistence); isolate with
  ``redis_namespace``, the prefix for every key a test creates (removed on teardown).
* ``private_redis`` — a Redis of the test's own, with an append-only file, to stop, kill,
  restart or wipe.
* ``tmux_socket`` — a private tmux server name for ``tmux -L``; killed on teardown.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from metawsm.transport.redis_process import RedisProcess

if TYPE_CHECKING:  # imported lazily in the fixtures: collecting tests should not load the daemon
    from support.daemon import InProcessDaemon, ServeProcess
from support.agents import runs_env  # noqa: F401 - a fixture, defined once for every runs test
from support.processes import (
    kill_tmux_server,
    require_executable,
    short_id,
    short_tmp_dir,
    unlink_prefix,
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    require_executable("redis-server")
    server = RedisProcess(tmp_path_factory.mktemp("redis-session"), appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    """URL of the shared session server; pair it with ``redis_namespace`` for isolation."""
    return redis_server.url


@pytest.fixture
def redis_namespace(redis_server: RedisProcess) -> Iterator[str]:
    """A unique key/stream prefix (``t<8 hex>``); keys starting with it are unlinked afterwards."""
    namespace = f"t{short_id()}"
    yield namespace
    unlink_prefix(redis_server.url, namespace)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A ``/tmp/mw-xxxx`` directory for unix sockets (which must stay under 107 bytes)."""
    path = short_tmp_dir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started Redis on its own free port with appendonly yes; always stopped afterwards."""
    require_executable("redis-server")
    server = RedisProcess(tmp_path / "private-redis", appendonly=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def tmux_socket() -> Iterator[str]:
    """A unique ``tmux -L`` socket name (``mwt-<8 hex>``); its server is killed afterwards."""
    require_executable("tmux")
    name = f"mwt-{short_id()}"
    try:
        yield name
    finally:
        kill_tmux_server(name)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "metawsm.db"


@pytest.fixture
def migrated_db(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a real SQLite file with every migration applied; closed on teardown."""
    from metawsm.store import migrate, open_connection

    conn = open_connection(db_path)
    migrate(conn)
    yield conn
    conn.close()


# -- the daemon -------------------------------------------------------------------------------


@pytest.fixture
def forum_daemon(redis_url: str, redis_namespace: str, tmp_path: Path) -> Iterator[InProcessDaemon]:
    """The whole actor system in this process, on the session Redis, with its own namespace."""
    from support.daemon import InProcessDaemon, make_policy

    daemon = InProcessDaemon(make_policy(redis_url, redis_namespace), tmp_path / "metawsm.db")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def serve_process(redis_url: str, redis_namespace: str, tmp_path: Path) -> Iterator[ServeProcess]:
    """A started `metawsm serve --debug` subprocess on a free port (session Redis, own namespace)."""
    from support.daemon import ServeProcess, policy_data

    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace))
    try:
        yield server.start()
    finally:
        server.stop()
