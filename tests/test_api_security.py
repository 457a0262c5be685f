"""The trust boundary at the HTTP level, against a real ``metawsm serve``.

* Host and Origin: a foreign ``Host`` (DNS rebinding) or ``Origin`` is refused for reads, writes
  and the WebSocket handshake, with a valid token too; an origin in ``api.allowed_origins`` gets
  CORS headers and its preflight answered, nobody else does.
* Writes need ``Content-Type: application/json`` (415), and a refused write leaves nothing behind.
* Tokens: every route but health, ``/api/v1/auth`` and the UI's files needs one (401); the
  token file is created with mode 0600; ``METAWSM_TOKEN`` replaces it; the login link trades the
  token for an HttpOnly, SameSite=Strict cookie; ``token rotate`` ends the old token and the
  sessions made from it.
* Exposure: ``--no-auth`` is refused off loopback, a non-loopback bind says so in the log.
* Runs stay inside the daemon's directories and under ``execution.max_tickets_per_run``.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from metawsm.api.app import route_table
from metawsm.api.registry import Access
from metawsm.transport.redis_process import free_tcp_port
from support.daemon import ServeProcess, policy_data, serving
from support.http import token_for
from support.processes import short_id

ALLOWED_ORIGIN = "https://dash.example:8443"


@pytest.fixture(scope="module")
def server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(redis_server.url, tmp_path_factory.mktemp("api-security"),
                 api={"allowed_origins": [ALLOWED_ORIGIN], "allowed_hosts": ["metawsm.lan"]}) as process:
        yield process


def raw(server: ServeProcess, method: str, path: str, headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange with exactly the headers given (``Host`` included)."""
    head = {"Host": f"127.0.0.1:{server.port}", "Connection": "close", **(headers or {})}
    if body is not None:
        head["Content-Length"] = str(len(body))
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request.encode() + (body or b""))
        data = b""
        while (chunk := sock.recv(65536)) and not _complete(data := data + chunk):
            pass
    header_block, _, payload = data.partition(b"\r\n\r\n")
    lines = header_block.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    parsed = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, parsed, payload


def _complete(data: bytes) -> bool:
    """Headers and Content-Length bytes of body are in (a refused upgrade keeps the connection open)."""
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def bearer(server: ServeProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(server.url)}"}


def error_code(payload: bytes) -> str:
    return json.loads(payload)["error"]["code"]


def thread_count(server: ServeProcess) -> int:
    with closing(sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)) as conn:
        return conn.execute("SELECT COUNT(*) FROM forum_threads").fetchone()[0]


NEW_THREAD = json.dumps({"ticket": "SEC-1", "title": "t", "body": "b"}).encode()
JSON = {"Content-Type": "application/json"}


# -- Host and Origin -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_foreign_host_is_refused_even_with_a_valid_token(server: ServeProcess, method: str) -> None:
    before = thread_count(server)
    body = NEW_THREAD if method == "POST" else None
    status, _, payload = raw(server, method, "/api/v1/forum/threads",
                             {"Host": f"evil.example:{server.port}", **bearer(server), **JSON}, body)
    assert status == 403 and error_code(payload) == "forbidden_host", payload
    assert thread_count(server) == before


@pytest.mark.parametrize("host", ["localhost:{port}", "[::1]:{port}", "127.0.0.1:{port}", "metawsm.lan:{port}"])
def test_the_daemons_own_names_and_allowed_hosts_are_served(server: ServeProcess, host: str) -> None:
    status, _, _ = raw(server, "GET", "/api/v1/forum/threads", {"Host": host.format(port=server.port), **bearer(server)})
    assert status == 200


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_foreign_origin_is_refused_even_with_a_valid_token(server: ServeProcess, method: str) -> None:
    before = thread_count(server)
    body = NEW_THREAD if method == "POST" else None
    status, headers, payload = raw(server, method, "/api/v1/forum/threads",
                                   {"Origin": "http://evil.example", **bearer(server), **JSON}, body)
    assert status == 403 and error_code(payload) == "forbidden_origin", payload
    assert "access-control-allow-origin" not in headers
    assert thread_count(server) == before


def test_a_websocket_handshake_from_a_foreign_origin_is_refused(server: ServeProcess) -> None:
    status, _, payload = raw(server, "GET", "/api/v1/forum/stream", {
        "Origin": "http://evil.example", "Upgrade": "websocket", "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13", **bearer(server)})
    assert status == 403 and error_code(payload) == "forbidden_origin"


def test_cross_site_fetch_metadata_is_refused_on_the_api(server: ServeProcess) -> None:
    status, _, payload = raw(server, "GET", "/api/v1/forum/threads", {"Sec-Fetch-Site": "cross-site", **bearer(server)})
    assert status == 403 and error_code(payload) == "forbidden_origin"


def test_the_daemons_own_origin_is_served_without_cors_headers(server: ServeProcess) -> None:
    status, headers, _ = raw(server, "GET", "/api/v1/forum/threads",
                             {"Origin": f"http://127.0.0.1:{server.port}", **bearer(server)})
    assert status == 200 and "access-control-allow-origin" not in headers


def test_an_allowed_origin_gets_cors_headers_and_its_preflight_answered(server: ServeProcess) -> None:
    status, headers, _ = raw(server, "OPTIONS", "/api/v1/forum/threads", {
        "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert status == 204
    assert headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "Authorization" in headers["access-control-allow-headers"]
    status, headers, _ = raw(server, "GET", "/api/v1/forum/threads", {"Origin": ALLOWED_ORIGIN, **bearer(server)})
    assert status == 200 and headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# -- writes are JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_write_that_is_not_json_is_415_and_writes_nothing(server: ServeProcess, content_type: str | None) -> None:
    before = thread_count(server)
    headers = bearer(server) | ({"Content-Type": content_type} if content_type else {})
    status, _, payload = raw(server, "POST", "/api/v1/forum/threads", headers, NEW_THREAD)
    assert status == 415 and error_code(payload) == "unsupported_media_type", payload
    assert thread_count(server) == before


# -- tokens ----------------------------------------------------------------------------------------


def concrete(path: str) -> str:
    return (path.replace("{action:stop|resume|restart|close|cleanup}", "stop").replace("{path:.+}", "root/nobody")
            .replace("{thread_id}", "missing").replace("{run_id}", "missing").replace("{message_id}", "0"))


ROUTES = [(route.method, route.path, route.effective_access) for route in route_table().routes]


@pytest.mark.parametrize(("method", "path", "access"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_every_route_but_the_public_ones_needs_a_token(server: ServeProcess, method: str, path: str,
                                                       access: Access) -> None:
    body = b"{}" if method == "POST" else None
    status, _, payload = raw(server, method, concrete(path), JSON, body)
    if access is Access.PUBLIC:
        assert status in (200, 303), (status, payload[:200])
    else:
        assert status == 401 and error_code(payload) == "unauthorized", (status, payload[:200])
        message = json.loads(payload)["error"]["message"]
        assert str(server.db_path.parent / "token") in message  # says where the token is, never what
        assert token_for(server.url) not in message


def test_a_wrong_token_is_401(server: ServeProcess) -> None:
    status, _, payload = raw(server, "GET", "/api/v1/forum/threads", {"Authorization": "Bearer mwo_nope"})
    assert status == 401 and error_code(payload) == "unauthorized"


def test_the_token_file_is_private_and_the_token_appears_in_the_log_only_in_the_login_link(
    server: ServeProcess,
) -> None:
    path = server.db_path.parent / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = token_for(server.url)
    lines = [line for line in server.log().splitlines() if token in line]
    assert len(lines) == 1 and f"{server.url}/?token={token}" in lines[0], lines


def test_the_login_link_sets_a_strict_httponly_cookie_and_drops_the_token(server: ServeProcess) -> None:
    status, headers, _ = raw(server, "GET", f"/?token={token_for(server.url)}")
    assert status == 303 and headers["location"].startswith("/#login=mwk_")
    key = headers["location"].removeprefix("/#login=")
    cookie = headers["set-cookie"]
    assert cookie.startswith("metawsm_session=mws_") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert token_for(server.url) not in cookie + key
    session = cookie.split(";", 1)[0]
    assert raw(server, "GET", "/api/v1/forum/threads", {"Cookie": session, "X-Metawsm-Page-Key": key})[0] == 200
    # Either half alone is nothing: a server on another port of 127.0.0.1 receives the cookie
    # (cookies ignore ports) but never the key, which lives in our origin's storage.
    assert raw(server, "GET", "/api/v1/forum/threads", {"Cookie": session})[0] == 401
    assert raw(server, "POST", "/api/v1/forum/threads", {"Cookie": session, **JSON}, NEW_THREAD)[0] == 401
    assert raw(server, "GET", "/api/v1/forum/threads", {"X-Metawsm-Page-Key": key})[0] == 401
    status, _, payload = raw(server, "GET", "/?token=mwo_wrong")
    assert status == 401 and "metawsm ui" in json.loads(payload)["error"]["message"]


def cli(server: ServeProcess, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "METAWSM_TOKEN"}
    return subprocess.run([sys.executable, "-m", "metawsm", *args], capture_output=True, text=True, timeout=60,
                          env={**base, "METAWSM_SERVER": server.url, **(env or {})}, cwd=cwd)


def test_the_cli_finds_the_token_by_itself_and_ui_prints_the_login_link(server: ServeProcess, tmp_path: Path) -> None:
    listed = cli(server, "forum", "list", cwd=tmp_path)  # another directory: found through the daemon
    assert listed.returncode == 0, listed.stderr
    link = cli(server, "ui", cwd=tmp_path)
    assert link.returncode == 0 and link.stdout.strip() == f"{server.url}/?token={token_for(server.url)}"
    wrong = cli(server, "forum", "list", "--token", "mwo_wrong")
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: invalid or revoked token")


def test_rotating_the_token_ends_the_old_one_and_its_ui_sessions(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace)).start()
    try:
        old = token_for(server.url)
        _, headers, _ = raw(server, "GET", f"/?token={old}")
        ui_session = {"Cookie": headers["set-cookie"].split(";", 1)[0],
                      "X-Metawsm-Page-Key": headers["location"].removeprefix("/#login=")}
        assert raw(server, "GET", "/api/v1/forum/threads", ui_session)[0] == 200
        rotated = cli(server, "token", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        assert "rotated: the new operator token is in" in rotated.stdout and old not in rotated.stdout
        new = token_for(server.url)
        assert new != old and stat.S_IMODE((server.db_path.parent / "token").stat().st_mode) == 0o600
        assert raw(server, "GET", "/api/v1/forum/threads", {"Authorization": f"Bearer {old}"})[0] == 401
        assert raw(server, "GET", "/api/v1/forum/threads", ui_session)[0] == 401
        assert raw(server, "GET", "/api/v1/forum/threads", {"Authorization": f"Bearer {new}"})[0] == 200
        assert cli(server, "forum", "list").returncode == 0  # the CLI reads the new file by itself
    finally:
        server.stop()


def test_a_token_from_the_environment_replaces_the_file_and_cannot_be_rotated(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    token = "mwo_from-the-environment"
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace),
                          env={"METAWSM_TOKEN": token}).start()
    try:
        assert not (server.db_path.parent / "token").exists()
        assert raw(server, "GET", "/api/v1/forum/threads", {"Authorization": f"Bearer {token}"})[0] == 200
        found = cli(server, "forum", "list")
        assert found.returncode == 2 and "pass --token or set METAWSM_TOKEN" in found.stderr
        rotate = cli(server, "token", "rotate", env={"METAWSM_TOKEN": token})
        assert rotate.returncode == 2 and "comes from METAWSM_TOKEN" in rotate.stderr
    finally:
        server.stop()


# -- exposure --------------------------------------------------------------------------------------


def test_no_auth_is_refused_on_a_non_loopback_address(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "metawsm", "serve", "--addr", f"0.0.0.0:{free_tcp_port()}",
                             "--no-auth"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --no-auth is only allowed on a loopback address, not {result.args[5]}"


def test_a_non_loopback_bind_warns_and_still_needs_tokens(redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace))
    server.extra_args = ("--addr", f"0.0.0.0:{server.port}")  # the last --addr wins
    server.start()
    try:
        assert f"serving on 0.0.0.0:{server.port}, which other machines can reach" in server.log()
        assert raw(server, "GET", "/api/v1/forum/threads")[0] == 401
        assert raw(server, "GET", "/api/v1/forum/threads", bearer(server))[0] == 200
    finally:
        server.stop()


def test_no_auth_on_loopback_keeps_the_browser_checks(redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace), extra_args=("--no-auth",))
    server.start()
    try:
        assert raw(server, "GET", "/api/v1/forum/threads")[0] == 200
        assert raw(server, "GET", "/api/v1/forum/threads", {"Origin": "http://evil.example"})[0] == 403
        assert raw(server, "POST", "/api/v1/forum/threads", {"Content-Type": "text/plain"}, NEW_THREAD)[0] == 415
        assert cli(server, "forum", "list").returncode == 0
    finally:
        server.stop()


# -- runs stay inside the daemon's directories -----------------------------------------------------


def post_run(server: ServeProcess, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, payload = raw(server, "POST", "/api/v1/runs", {**bearer(server), **JSON}, json.dumps(body).encode())
    return status, json.loads(payload)


def test_a_run_cannot_name_a_cwd_outside_the_daemons_directories(server: ServeProcess) -> None:
    status, body = post_run(server, {"tickets": ["SEC-2"], "repos": ["etc"], "cwd": "/etc", "dry_run": True})
    assert status == 403 and body["error"]["code"] == "forbidden_path", body
    assert "add the repository to workspace.repo_sources" in body["error"]["message"]


def test_a_run_cannot_reach_a_repository_outside_the_daemons_directories(server: ServeProcess) -> None:
    outside = server.workdir.parent / f"outside-{short_id()}"
    outside.mkdir()
    subprocess.run(["git", "init", "-q", str(outside)], check=True)
    status, body = post_run(server, {"tickets": ["SEC-3"], "repos": [outside.name], "cwd": str(server.workdir),
                                     "dry_run": True})
    assert status == 403 and body["error"]["code"] == "forbidden_path", body
    assert f'repo "{outside.name}" resolves to {outside}' in body["error"]["message"]
    assert subprocess.run(["git", "-C", str(outside), "worktree", "list"], capture_output=True,
                          text=True).stdout.count("\n") == 1  # no worktree was added


def test_a_run_may_name_at_most_max_tickets_per_run_tickets(server: ServeProcess) -> None:
    tickets = [f"SEC-{n}" for n in range(11)]
    status, body = post_run(server, {"tickets": tickets, "repos": ["x"], "dry_run": True})
    assert status == 400 and body["error"]["code"] == "too_many_tickets", body
    assert "at most 10 tickets (execution.max_tickets_per_run)" in body["error"]["message"]
