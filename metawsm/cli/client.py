"""A small blocking HTTP client for the daemon's JSON API, and the click glue around it.

The CLI process must start fast and fail fast.  This module imports nothing beyond click and
a few cheap standard-library modules (no aiohttp, msgspec, ``http.client`` or server modules).
A daemon that is not there is reported at once: a refused or slow TCP connect on the first
attempt becomes :class:`DaemonUnreachable` within ``CONNECT_TIMEOUT`` seconds.

Writes (:meth:`DaemonClient.post`) carry a fresh ``Idempotency-Key`` and are retried with that
same key when the outcome is unknown or the daemon asks for it: a 503, a connection reset or
closed before the answer, no answer in time, a refused connect after an earlier attempt got
through.  The daemon applies a key once and answers its retries alike (docs/api.md), so a
retried ``forum ask`` never opens two threads.  Retries are bounded (:data:`RETRY_DELAYS`,
:data:`RETRY_DEADLINE`).

Every response is returned with its raw body so ``--json`` can print the API's JSON exactly as
the server sent it.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import click

from metawsm.cli import exit_codes

DEFAULT_SERVER = "http://127.0.0.1:3001"
SERVER_ENV = "METAWSM_SERVER"
TOKEN_ENV = "METAWSM_TOKEN"
TOKEN_META = "metawsm.token"  # where --token leaves its value in click's context
AUTH_INFO_PATH = "/api/v1/auth"
# Routes that need no token: asking for one first would only cost a round trip.
PUBLIC_PATHS = ("/api/v1/health", AUTH_INFO_PATH)
AGENT_TOKEN_PREFIX = "mwa_"
CONNECT_TIMEOUT = 0.4  # seconds; a local daemon accepts in well under a millisecond
READ_TIMEOUT = 60.0  # a write waits at most the server's write budget (5 s by default)
USER_AGENT = "metawsm-cli"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Waits before the 2nd, 3rd and 4th attempt of a write, each ±50 % at random so that clients
# cut off together do not come back together: at most 4 attempts, under 2.7 s of waiting.
RETRY_DELAYS = (0.25, 0.5, 1.0)
RETRY_DEADLINE = 10.0  # seconds after the first attempt began: no retry starts later


class ClientError(Exception):
    """Base class for failures the CLI reports as one ``error:`` line."""

    exit_code = 1


class BadServerUrl(ClientError):
    exit_code = 2


class NoToken(ClientError):
    """No token was given and the daemon's token file cannot be read."""

    exit_code = 2


class DaemonUnreachable(ClientError):
    """The TCP connection to the daemon could not be made (or broke before a response).

    ``sent``: the request was (at least partly) sent, so the daemon may have acted on it.
    """

    def __init__(self, server: str, reason: str, sent: bool = False) -> None:
        super().__init__(
            f"cannot reach metawsm serve at {server} ({reason}); start it with: metawsm serve"
        )
        self.server = server
        self.reason = reason
        self.sent = sent


class NoAnswer(ClientError):
    """The request was sent but no (complete) answer came: timed out, or the connection was
    closed before the end of the response.  The daemon may or may not have acted on it."""


class ApiFailure(ClientError):
    """The daemon answered with an error status: 4xx is the caller's fault (exit 2), except the
    codes :data:`metawsm.cli.exit_codes.EXCEPTIONS` lists (``close_blocked`` → 1)."""

    def __init__(self, status: int, code: str, message: str, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.exit_code = exit_codes.for_error(status, code)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    data: Any

    @property
    def accepted(self) -> bool:
        """HTTP 202: the write is durable but not applied yet (the bus is down or slow)."""
        return self.status == 202

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    host: str
    port: int
    base_path: str
    display: str  # how the user wrote it, normalised (no trailing slash)

    @classmethod
    def parse(cls, server: str) -> ServerAddress:
        text = (server or "").strip().rstrip("/")
        if not text:
            raise BadServerUrl("--server is empty; expected a URL such as http://127.0.0.1:3001")
        if "://" not in text:
            # "127.0.0.1:3001" or ":3001" (like serve --addr)
            text = "http://" + (("127.0.0.1" + text) if text.startswith(":") else text)
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as error:
            raise BadServerUrl(f"invalid --server URL {server!r}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadServerUrl(f"invalid --server URL {server!r}: expected http://HOST:PORT")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port, parts.path.rstrip("/"), text)

    def ws_url(self, path: str, query: dict[str, Any] | None = None) -> str:
        scheme = "wss" if self.scheme == "https" else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.base_path}{path}{query_string(query)}"


def query_string(query: dict[str, Any] | None) -> str:
    if not query:
        return ""
    pairs = [(k, str(v)) for k, v in query.items() if v is not None and v != ""]
    return ("?" + urlencode(pairs)) if pairs else ""


def path_segment(value: str) -> str:
    """Quote an id for use as one path segment."""
    return quote(value, safe="")


class ProtocolError(Exception):
    """The bytes that came back are not an HTTP/1.x response we understand."""


class TruncatedResponse(ProtocolError):
    """The connection was closed before the whole response arrived (the daemon died, say)."""


def _open_socket(address: ServerAddress, connect_timeout: float, read_timeout: float) -> socket.socket:
    sock = socket.create_connection((address.host, address.port), connect_timeout)
    sock.settimeout(read_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if address.scheme == "https":
        import ssl  # only for https: it costs start-up time

        sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address.host)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response; returns (status, body).

    Stops as soon as ``Content-Length`` bytes have arrived (we asked for ``Connection: close``,
    but do not rely on the server closing); otherwise reads until the server closes.
    """
    buffer = b""
    status, body_start = 0, -1
    headers: dict[str, str] = {}
    while True:
        data = sock.recv(65536)
        if data:
            buffer += data
        if body_start < 0:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                status, headers = _parse_head(buffer[:end])
                body_start = end + 4
        if body_start >= 0:
            length = headers.get("content-length", "")
            chunked = "chunked" in headers.get("transfer-encoding", "").lower()
            if not chunked and length.isdigit() and len(buffer) - body_start >= int(length):
                return status, buffer[body_start:body_start + int(length)]
            if chunked and buffer.endswith(b"0\r\n\r\n"):
                return status, _dechunk(buffer[body_start:])
        if not data:
            break
    if body_start < 0:
        raise TruncatedResponse("incomplete HTTP response" if buffer else "connection closed without a response")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, _dechunk(buffer[body_start:])
    if headers.get("content-length", "").isdigit():
        raise TruncatedResponse("connection closed in the middle of the response")
    return status, buffer[body_start:]


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def _dechunk(data: bytes) -> bytes:
    out: list[bytes] = []
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise ProtocolError("truncated chunked response")
        size = int(data[pos:end].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


def _reason(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host: {error.strerror or error}"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()  # e.g. "no route to host", "network is unreachable"
    return str(error) or type(error).__name__


class DaemonClient:
    """One-shot JSON requests to ``metawsm serve``."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        token: str | None = None,
    ) -> None:
        self.address = ServerAddress.parse(server)
        self.server = self.address.display
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        # --token, then METAWSM_TOKEN; None means "ask the daemon where its token file is".
        self._token = token if token is not None else given_token()

    # -- the credential ------------------------------------------------------------------------

    def token(self) -> str:
        """The token to send ("" when the daemon runs without tokens).

        Without --token or METAWSM_TOKEN, the daemon says where its operator token file is
        (``GET /api/v1/auth``) and the file is read: the user who started the daemon needs no
        set-up, anyone else cannot read the file.
        """
        if self._token is None:
            self._token = self._discover_token()
        return self._token

    @property
    def is_agent(self) -> bool:
        """True when this client speaks with an agent's token (inside an agent's session)."""
        return (self._token or "").startswith(AGENT_TOKEN_PREFIX)

    def auth_headers(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _discover_token(self) -> str:
        info = self.request("GET", AUTH_INFO_PATH, authenticate=False).data or {}
        if info.get("auth") == "off":
            return ""
        path = str(info.get("token_file") or "")
        hint = f"pass --token or set {TOKEN_ENV}"
        if not path:
            raise NoToken(f"metawsm serve at {self.server} needs a token and keeps it outside a file; {hint}")
        try:
            with open(path, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
            raise NoToken(f"cannot read the token file {path} of metawsm serve at {self.server} ({reason}); "
                          f"{hint}") from None
        if not token:
            raise NoToken(f"the token file {path} is empty; {hint}")
        return token

    # -- verbs ---------------------------------------------------------------------------------

    def probe(self) -> None:
        """Open and close a TCP connection: raises :class:`DaemonUnreachable` when nobody listens."""
        try:
            _open_socket(self.address, self.connect_timeout, self.connect_timeout).close()
        except OSError as error:
            raise DaemonUnreachable(self.server, _reason(error)) from None

    def get(self, path: str, query: dict[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> Response:
        return self.request("GET", path + query_string(query), ok=ok)

    def post(
        self, path: str, body: dict[str, Any] | None = None, ok: tuple[int, ...] = (200, 202),
        read_timeout: float | None = None,
    ) -> Response:
        """A write: sent with a fresh ``Idempotency-Key`` and retried with it (module docstring)."""
        return self.request("POST", path, body if body is not None else {}, ok=ok, read_timeout=read_timeout,
                            idempotency_key=new_idempotency_key())

    def request(
        self, method: str, target: str, body: Any = None, ok: tuple[int, ...] = (200,),
        read_timeout: float | None = None, authenticate: bool | None = None, idempotency_key: str | None = None,
    ) -> Response:
        """One request; with ``idempotency_key``, retried while its outcome is unknown (bounded)."""
        payload = None if body is None else json.dumps(body).encode("utf-8")
        if authenticate is None:
            authenticate = target.partition("?")[0] not in PUBLIC_PATHS
        headers = self.auth_headers() if authenticate else {}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        target = self.address.base_path + target
        started = time.monotonic()
        attempt, reached = 0, False
        while True:
            try:
                status, raw = self._exchange(method, target, payload, read_timeout, headers)
                reached = True
                if status != 503 or idempotency_key is None:
                    break
                failure: ClientError = _failure(status, _decode(raw), raw)
            except DaemonUnreachable as error:
                reached = reached or error.sent
                # Refused before anything was sent: nobody listens.  Only after an earlier attempt
                # got through is that the daemon restarting, worth waiting for.
                if idempotency_key is None or not reached:
                    raise
                failure = error
            except NoAnswer as error:
                if idempotency_key is None:
                    raise
                reached, failure = True, error
            delay = _retry_delay(attempt)
            if delay is None or time.monotonic() - started + delay > RETRY_DEADLINE:
                raise failure
            time.sleep(delay)
            attempt += 1
        data = _decode(raw)
        if status not in ok:
            raise _failure(status, data, raw)
        return Response(status, raw, data)

    def _exchange(self, method: str, target: str, payload: bytes | None, read_timeout: float | None,
                  headers: dict[str, str]) -> tuple[int, bytes]:
        """One request on a fresh connection (``Connection: close``), no retry.

        A raw HTTP/1.1 exchange rather than ``http.client``: that module (with ``email`` and
        ``ssl``) alone costs ~50 ms of start-up, a sixth of the CLI's whole budget.
        """
        timeout = read_timeout or self.read_timeout
        address = self.address
        host = f"[{address.host}]" if ":" in address.host else address.host
        default_port = 443 if address.scheme == "https" else 80
        host_header = host if address.port == default_port else f"{host}:{address.port}"
        head = [f"{method} {target} HTTP/1.1", f"Host: {host_header}", f"User-Agent: {USER_AGENT}",
                "Accept: application/json", "Connection: close"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if payload is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (payload or b"")
        try:
            sock = _open_socket(address, self.connect_timeout, timeout)
        except OSError as error:
            raise DaemonUnreachable(self.server, _reason(error)) from None
        try:
            sock.sendall(request)
            return _read_response(sock)
        except TimeoutError:
            raise NoAnswer(f"metawsm serve at {self.server} did not answer within {timeout:g}s") from None
        except TruncatedResponse as error:
            raise NoAnswer(f"bad response from {self.server}: {error}") from None
        except ProtocolError as error:
            raise ClientError(f"bad response from {self.server}: {error}") from None
        except OSError as error:
            raise DaemonUnreachable(self.server, _reason(error), sent=True) from None
        finally:
            sock.close()


def new_idempotency_key() -> str:
    """A fresh key for one write command (128 random bits; ``os.urandom`` costs no import)."""
    return "cli-" + os.urandom(16).hex()


def _retry_delay(attempt: int) -> float | None:
    """The wait before retry number ``attempt + 1`` (None: no retries left), ±50 % at random."""
    if attempt >= len(RETRY_DELAYS):
        return None
    jitter = int.from_bytes(os.urandom(2), "big") / 0xFFFF  # 0..1
    return RETRY_DELAYS[attempt] * (0.5 + jitter)


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _failure(status: int, data: Any, raw: bytes) -> ApiFailure:
    code, message = "", ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        code = str(data["error"].get("code", ""))
        message = str(data["error"].get("message", ""))
    if not message:
        snippet = raw.decode("utf-8", errors="replace").strip().splitlines()
        message = f"HTTP {status}" + (f": {snippet[0][:200]}" if snippet else "")
    if status >= 500:
        message = f"server error (HTTP {status}): {message}"
    return ApiFailure(status, code, message, raw)


# -- click glue shared by every command that talks to the daemon --------------------------------

F = Callable[..., Any]


def given_token() -> str | None:
    """The token from ``--token`` (this command's), else ``METAWSM_TOKEN``, else None."""
    ctx = click.get_current_context(silent=True)
    token = ctx.meta.get(TOKEN_META) if ctx is not None else None
    if token:
        return str(token)
    return os.environ.get(TOKEN_ENV, "").strip() or None


def _remember_token(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[TOKEN_META] = value.strip()


def server_option(function: F) -> F:
    """``--server URL`` (default http://127.0.0.1:3001, env METAWSM_SERVER) and ``--token``.

    ``--token`` is not passed to the command: :class:`DaemonClient` picks it up, so no command
    has to thread it through.
    """
    function = click.option(
        "--token",
        expose_value=False,
        callback=_remember_token,
        metavar="TOKEN",
        help=f"API token (default: ${TOKEN_ENV}, else the daemon's token file).",
    )(function)
    return click.option(
        "--server",
        envvar=SERVER_ENV,
        default=DEFAULT_SERVER,
        show_default=True,
        show_envvar=True,
        metavar="URL",
        help="Base URL of the metawsm serve daemon.",
    )(function)


def json_option(function: F) -> F:
    """``--json``: print the API's JSON as-is (stable, for scripts)."""
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON response as-is.")(function)


def fail(message: str, code: int) -> NoReturn:
    """One ``error:`` line on stderr, then exit with ``code`` (never a traceback)."""
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def reports_errors(function: F) -> F:
    """Turn expected failures into one ``error:`` line and the contract's exit code.

    4xx from the server → 2, unreachable daemon / 5xx / timeouts → 1.  A closed stdout (the
    output piped into ``head``) ends the command quietly.
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ClientError as error:
            fail(str(error), error.exit_code)
        except BrokenPipeError:
            _silence_stdout()
            raise SystemExit(0) from None

    return wrapper


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def print_json(response: Response) -> None:
    """The response body exactly as the server sent it, newline-terminated."""
    text = response.text
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()

