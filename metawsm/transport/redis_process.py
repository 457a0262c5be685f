"""Own one private ``redis-server`` child process.

The daemon falls back to a Redis of its own when none answers at ``forum.redis.url``
(``forum.redis.embedded``), and the test suite needs Redis servers it may stop, kill, restart
and wipe.  Both want the same thing: start the real binary with an explicit argv (no config
file, no shell), know when it is ready (a PING answers), and stop it for sure.

One owner drives an instance; it is not thread-safe.  A server still running when the
interpreter exits is terminated by a finalizer, so a crashed owner does not leave a Redis
holding its socket and append-only file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import weakref
from pathlib import Path
from types import TracebackType

import redis

from metawsm.waiting import wait_until

# sockaddr_un.sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_UNIX_SOCKET_PATH = 107
LOOPBACK = "127.0.0.1"
FSYNC_POLICIES = ("always", "everysec", "no")

_LOG_TAIL_LINES = 30
_PORT_RETRIES = 5  # a free port we picked can be taken by someone else before Redis binds it


class RedisServerNotFound(FileNotFoundError):
    """No usable ``redis-server`` executable."""


class RedisStartError(RuntimeError):
    """``redis-server`` exited or never answered PING; the message carries the log tail."""


class SocketPathTooLong(ValueError):
    """The unix socket path does not fit in ``sockaddr_un``; pick a shorter directory."""


def find_redis_server(binary: str | os.PathLike[str] = "redis-server") -> str | None:
    """Resolve ``binary`` (a name looked up on PATH, or a path) to an executable, or None."""
    return shutil.which(os.fspath(binary))


def redis_server_available(binary: str | os.PathLike[str] = "redis-server") -> bool:
    return find_redis_server(binary) is not None


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the kernel's pick; racy, so callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM (Redis flushes its AOF and removes its socket), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


class RedisProcess:
    """A ``redis-server`` child listening on a unix socket or a loopback TCP port.

    ``port`` None or 0 without ``unix_socket`` picks a free port; it is then kept across
    :meth:`restart` so URLs handed out stay valid.  Relative paths are made absolute because
    Redis changes into ``data_dir`` before it binds its socket.
    """

    def __init__(
        self,
        data_dir: Path,
        unix_socket: Path | None = None,
        port: int | None = None,
        appendonly: bool = True,
        fsync: str = "everysec",
        redis_server_binary: str | os.PathLike[str] = "redis-server",
    ) -> None:
        if unix_socket is not None and port:
            raise ValueError("RedisProcess takes a unix_socket or a port, not both")
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {'|'.join(FSYNC_POLICIES)}, got {fsync!r}")
        binary = find_redis_server(redis_server_binary)
        if binary is None:
            raise RedisServerNotFound(
                f"redis-server executable {os.fspath(redis_server_binary)!r} not found "
                f"(PATH={os.environ.get('PATH', '')!r}); install Redis 7 "
                "(e.g. apt-get install redis-server) or point forum.redis.url at a running Redis"
            )
        self._binary = binary
        self._data_dir = Path(data_dir).absolute()
        self._unix_socket = Path(unix_socket).absolute() if unix_socket is not None else None
        if self._unix_socket is not None:
            length = len(os.fsencode(self._unix_socket))
            if length > MAX_UNIX_SOCKET_PATH:
                raise SocketPathTooLong(
                    f"unix socket path is {length} bytes, over the Linux limit of "
                    f"{MAX_UNIX_SOCKET_PATH}: {self._unix_socket}; choose a shorter directory"
                )
        self._auto_port = self._unix_socket is None and not port
        self._port: int | None = None
        if self._unix_socket is None:
            self._port = port or free_tcp_port()
        self._appendonly = appendonly
        self._fsync = fsync
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize | None = None
        self._started_once = False

    # -- addressing -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._unix_socket is not None:
            return f"unix://{self._unix_socket}?db=0"
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def port(self) -> int | None:
        """The TCP port, or None in unix-socket mode."""
        return self._port

    @property
    def unix_socket(self) -> Path | None:
        return self._unix_socket

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_path(self) -> Path:
        return self._data_dir / "redis.log"

    @property
    def console_log_path(self) -> Path:
        """stdout/stderr of the child: errors Redis prints before it opens ``log_path``."""
        return self._data_dir / "redis.console.log"

    @property
    def pid(self) -> int | None:
        """The running child's pid, None when no server is running."""
        return self._process.pid if self.is_running() and self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The exact command line; public so logs and tests can show what was run."""
        args = [self._binary, "--bind", LOOPBACK]
        if self._unix_socket is not None:
            args += ["--port", "0", "--unixsocket", str(self._unix_socket), "--unixsocketperm", "700"]
        else:
            # Bound to loopback only, so protected mode would just refuse our own clients.
            args += ["--port", str(self._port), "--protected-mode", "no"]
        args += [
            "--dir", str(self._data_dir),
            "--appendonly", "yes" if self._appendonly else "no",
            "--appendfsync", self._fsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]
        return args

    def start(self, timeout: float = 10.0) -> None:
        """Spawn the server and return once it answers PING; raise RedisStartError otherwise."""
        if self.is_running():
            raise RuntimeError(f"redis-server already running (pid {self.pid})")
        self._data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._unix_socket is not None:
            self._unix_socket.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        attempts = _PORT_RETRIES if self._auto_port and not self._started_once else 1
        for attempt in range(1, attempts + 1):
            try:
                self._spawn_and_wait(timeout)
            except RedisStartError as error:
                if attempt < attempts and "Address already in use" in str(error):
                    self._port = free_tcp_port()
                    continue
                raise
            self._started_once = True
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM, then SIGKILL after ``timeout``); a no-op when stopped."""
        process = self._process
        if process is not None:
            _terminate(process, timeout)
        self._forget_process()

    def kill(self) -> None:
        """SIGKILL without any flush, to simulate a crash; the process is reaped."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        self._forget_process()

    def restart(self, wipe_data: bool = False, timeout: float = 10.0) -> None:
        """Stop, optionally delete every persistence file so Redis comes back empty, start.

        Same port or socket as before, so existing URLs keep working.
        """
        self.stop(timeout=timeout)
        if wipe_data:
            self.wipe_data()
        self.start(timeout=timeout)

    def wipe_data(self) -> None:
        """Remove AOF (file or Redis 7 directory) and RDB files; only while stopped."""
        if self.is_running():
            raise RuntimeError("refusing to wipe the data of a running redis-server")
        if not self._data_dir.is_dir():
            return
        for entry in self._data_dir.iterdir():
            name = entry.name
            if entry.is_dir() and name == "appendonlydir":
                shutil.rmtree(entry)
            elif name.startswith("appendonly.aof") or name.endswith(".rdb") or (
                name.startswith("temp-") and name.endswith(".aof")
            ):
                entry.unlink()

    def __enter__(self) -> RedisProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running() else "stopped"
        return f"RedisProcess({self.url}, {state})"

    # -- internals --------------------------------------------------------------------------

    def _spawn_and_wait(self, timeout: float) -> None:
        log_offset = _size(self.log_path)
        console_offset = _size(self.console_log_path)
        with open(self.console_log_path, "ab") as console:
            process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=console, stderr=console
            )
        self._process = process
        self._finalizer = weakref.finalize(self, _terminate, process, 5.0)

        def ready() -> bool:
            if process.poll() is not None:
                raise RedisStartError(
                    f"redis-server exited with status {process.returncode} during start "
                    f"({self.url})\n{self._log_tail(log_offset, console_offset)}"
                )
            return self._answers_as(process.pid)

        try:
            wait_until(
                ready,
                timeout=timeout,
                interval=0.01,
                message=f"redis-server (pid {process.pid}) did not answer PING at {self.url}",
            )
        except TimeoutError as error:
            self.kill()
            raise RedisStartError(f"{error}\n{self._log_tail(log_offset, console_offset)}") from None
        except RedisStartError:
            self._forget_process()
            raise

    def _answers_as(self, pid: int) -> bool:
        """PING answers and the server behind the URL is our child, not a stranger.

        Without the pid check, a server already listening on the port we failed to bind
        would pass for ours.
        """
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=1.0)
        try:
            if not client.ping():
                return False
            return int(client.info("server")["process_id"]) == pid
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            return False
        finally:
            client.close()

    def _forget_process(self) -> None:
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = None
        self._process = None

    def _log_tail(self, log_offset: int, console_offset: int) -> str:
        """What this start attempt wrote to both logs, last lines only."""
        parts = []
        for label, path, offset in (
            ("redis.log", self.log_path, log_offset),
            ("console", self.console_log_path, console_offset),
        ):
            text = _read_from(path, offset)
            if text.strip():
                lines = text.rstrip().splitlines()[-_LOG_TAIL_LINES:]
                parts.append(f"--- {label} ({path}) ---\n" + "\n".join(lines))
        return "\n".join(parts) if parts else "(redis-server wrote nothing to its logs)"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
