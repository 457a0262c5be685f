"""RedisProcess against the real redis-server binary: start, sockets, persistence, crashes."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
import redis

from metawsm.transport.redis_process import (
    RedisProcess,
    RedisServerNotFound,
    RedisStartError,
    SocketPathTooLong,
    redis_server_available,
)
from support.processes import unlink_prefix


def _ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_connect_timeout=2) as client:
        return bool(client.ping())


def test_starts_on_a_free_port_and_answers_ping(tmp_path: Path) -> None:
    with RedisProcess(tmp_path / "data", appendonly=False) as server:
        assert server.is_running()
        assert isinstance(server.pid, int)
        assert server.port and server.port > 0
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert _ping(server.url)
        assert (tmp_path / "data" / "redis.log").is_file()
    assert not server.is_running()
    assert server.pid is None


def test_unix_socket_mode_answers_ping(short_tmp: Path) -> None:
    socket_path = short_tmp / "r.sock"
    with RedisProcess(short_tmp / "data", unix_socket=socket_path) as server:
        assert server.port is None
        assert server.url == f"unix://{socket_path}?db=0"
        assert _ping(server.url)
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o700
    assert not socket_path.exists()  # a clean shutdown removes the socket


def test_too_long_socket_path_is_refused_clearly(short_tmp: Path) -> None:
    long_path = short_tmp / ("x" * 120) / "r.sock"
    with pytest.raises(SocketPathTooLong, match="107"):
        RedisProcess(short_tmp / "data", unix_socket=long_path)


def test_restart_with_wipe_loses_streams(private_redis: RedisProcess) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        client.xadd("wipe.stream", {"k": "v"})
    private_redis.restart(wipe_data=True)
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.exists("wipe.stream") == 0
        assert client.dbsize() == 0


def test_restart_without_wipe_keeps_appendonly_data(private_redis: RedisProcess) -> None:
    url_before = private_redis.url
    with redis.Redis.from_url(private_redis.url) as client:
        client.xadd("keep.stream", {"k": "v"})
    private_redis.restart(wipe_data=False)
    assert private_redis.url == url_before
    with redis.Redis.from_url(private_redis.url) as client:
        assert client.xlen("keep.stream") == 1


def test_kill_then_start_again(private_redis: RedisProcess) -> None:
    first_pid = private_redis.pid
    private_redis.kill()
    assert not private_redis.is_running()
    assert private_redis.pid is None
    private_redis.start()
    assert private_redis.is_running()
    assert private_redis.pid != first_pid
    assert _ping(private_redis.url)


def test_stop_is_idempotent(private_redis: RedisProcess) -> None:
    private_redis.stop()
    private_redis.stop()
    assert not private_redis.is_running()


def test_start_failure_reports_log_tail(redis_server: RedisProcess, tmp_path: Path) -> None:
    assert redis_server.port is not None
    clash = RedisProcess(tmp_path / "clash", port=redis_server.port, appendonly=False)
    with pytest.raises(RedisStartError, match="Address already in use"):
        clash.start(timeout=10)
    assert not clash.is_running()


def test_missing_binary_on_path_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert not redis_server_available()
    with pytest.raises(RedisServerNotFound, match="redis-server.*not found.*install Redis"):
        RedisProcess(tmp_path / "data")


def test_missing_explicit_binary_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "redis-server"
    assert not redis_server_available(missing)
    with pytest.raises(RedisServerNotFound, match="no-such-dir"):
        RedisProcess(tmp_path / "data", redis_server_binary=missing)


def test_invalid_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        RedisProcess(tmp_path, unix_socket=Path("/tmp/x.sock"), port=6390)
    with pytest.raises(ValueError, match="fsync"):
        RedisProcess(tmp_path, fsync="sometimes")


def test_auto_port_taken_before_start_picks_another(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path / "data", appendonly=False)
    taken = server.port
    assert taken is not None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        with server:
            assert server.port != taken
            assert _ping(server.url)


def test_namespace_cleanup_unlinks_only_prefixed_keys(redis_url: str, redis_namespace: str) -> None:
    other = f"{redis_namespace}-other-test-would-not-use-this"
    with redis.Redis.from_url(redis_url) as client:
        for i in range(3):
            client.xadd(f"{redis_namespace}.topic{i}", {"n": i})
        client.set("unrelated.key.for.cleanup.test", 1)
        assert unlink_prefix(redis_url, redis_namespace + ".") == 3
        assert client.exists("unrelated.key.for.cleanup.test") == 1
        client.delete("unrelated.key.for.cleanup.test", other)
