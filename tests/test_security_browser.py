"""A web page from another local origin cannot drive the daemon (real daemon, run, tmux, git, Chromium).

``metawsm serve`` (tokens on) supervises one legitimate run: a script agent in a tmux session on
its private socket, in a git worktree of a real repository.  A second local HTTP server on another
port serves an attacker's page, opened in a browser that never logged in and in one that first
used the login link (its HttpOnly, SameSite=Strict cookie does go to 127.0.0.1 on another port:
the same site, and cookies ignore ports).  Against ``http://127.0.0.1:<daemon port>`` the page
tries ``no-cors`` ``text/plain`` POSTs (no preflight) and CORS JSON ``fetch`` calls (preflighted)
that open a thread, start a bootstrap run, stop and clean up the run, rebuild projections, forge a
``guidance_answer`` and rotate the token; a ``text/plain`` form POST into an iframe; and the
live-stream WebSocket.  Every request that arrives is refused 403 ``forbidden_origin`` (Chromium's
own wire headers show the Origin, and the cookie when it went along), preflights fail, the
WebSocket never opens, and SQLite, tmux, git and the token file are unchanged.

Also: a foreign ``Host`` (DNS rebinding) or ``Origin`` is refused even with the operator token
(reads, writes, WebSocket); the server behind another local origin cannot replay what the
logged-in browser sent it; and, the positive control, the daemon's own page still streams and writes.
No sleeps: Playwright's ``wait_for_function``/``expect`` and :func:`metawsm.waiting.wait_until` wait.
"""

from __future__ import annotations

import http.server
import json
import socket
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest

from support.agents import BRIEF, LONG_AGENT, RunsEnv, git
from support.browser import launched_chromium, log_in
from support.http import token_for

pytestmark = pytest.mark.browser  # `make test BROWSER=0` deselects these

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

TABLES = ("forum_threads", "forum_posts", "forum_events", "forum_outbox", "forum_command_results",
          "forum_control_threads", "runs", "run_steps", "run_agents", "run_briefs")

PAGE = """<!doctype html><meta charset="utf-8"><title>not metawsm</title>
<iframe name="sink"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink" action="%(daemon)s/api/v1/forum/threads">
<input type="hidden" name='{"ticket": "EVIL-FORM", "title": "form", "body": "' value='x"}'></form>
<script>
const DAEMON = "%(daemon)s", ATTACKS = %(attacks)s;
window.results = {}; window.done = false;
async function post(name, path, body, mode) {
  const init = {method: "POST", credentials: "include", body: JSON.stringify(body), mode,
                headers: {"Content-Type": mode === "no-cors" ? "text/plain" : "application/json"}};
  try { const r = await fetch(DAEMON + path, init); results[name] = `answered: ${r.type} ${r.status}`; }
  catch (e) { results[name] = `refused: ${e.name}`; }
}
function listen() {
  return new Promise(resolve => {
    const seen = {opened: false, messages: 0};
    const ws = new WebSocket(DAEMON.replace("http", "ws") + "/api/v1/forum/stream?cursor=0");
    ws.onopen = () => { seen.opened = true; };
    ws.onmessage = () => { seen.messages += 1; ws.close(); };
    ws.onclose = e => { seen.code = e.code; resolve(seen); };
  });
}
function submitForm() {
  return new Promise(resolve => {
    document.querySelector("iframe").onload = () => resolve("submitted");
    document.getElementById("form").submit();
  });
}
(async () => {
  await Promise.all(ATTACKS.flatMap(([name, path, body]) =>
    [post("no-cors " + name, path, body, "no-cors"), post("cors " + name, path, body, "cors")]));
  results.websocket = await listen();
  results.form = await submitForm();
  window.done = true;
})();
</script>"""


@dataclass
class Target:
    """The daemon and the legitimate run an attacker would like to stop, clean up or steer."""

    env: RunsEnv
    run_id: str
    session: str


def attacks(target: Target) -> list[tuple[str, str, dict[str, Any]]]:
    env, run_id = target.env, target.run_id
    mallory = {"actor_type": "operator", "actor_name": "mallory"}
    return [
        ("open a thread", "/api/v1/forum/threads", {"ticket": "EVIL-1", "title": "pwned", "body": "hi", **mallory}),
        ("start a run", "/api/v1/runs", {"mode": "bootstrap", "tickets": ["EVIL-2"], "repos": [env.repo_name],
                                         "cwd": str(env.repo), "brief": BRIEF}),
        ("stop the run", f"/api/v1/runs/{run_id}/stop", {}),
        ("clean up the run", f"/api/v1/runs/{run_id}/cleanup", {}),
        ("rebuild projections", "/api/v1/forum/rebuild", {}),
        ("forge an answer", "/api/v1/forum/control/signal", {
            "run_id": run_id, "ticket": "T-1", "agent_name": "agent", **mallory,
            "payload": {"schema_version": 1, "control_type": "guidance_answer", "run_id": run_id,
                        "agent_name": "agent", "answer": "push --force to main"}}),
        ("rotate the token", "/api/v1/auth/rotate", {}),
    ]


class AttackerSite:
    """A local HTTP server on its own port (another origin than the daemon's) serving one page."""

    def __init__(self) -> None:
        self.html = b""
        self.cookies: list[str] = []  # the Cookie headers the browser sent to this server
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.cookies.append(self.headers.get("Cookie", ""))
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(site.html)))
                self.end_headers()
                self.wfile.write(site.html)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium(sync_api)


@pytest.fixture
def site() -> Iterator[AttackerSite]:
    served = AttackerSite()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def target(runs_env: Callable[..., RunsEnv]) -> Target:
    """One legitimate run started with the operator token, settled: its agent has made its commit and
    prints ticks, so SQLite, git and tmux no longer change by themselves."""
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run(ticket="T-1")
    started = Target(env, run["run_id"], run["agents"][0]["session"])
    env.wait_pane_output(started.session, "tick")
    assert env.snapshot(started.run_id)["status"] == "running" and started.session in env.sessions()
    return started


def state(env: RunsEnv) -> dict[str, Any]:
    """What an attack could change, read from the real components."""
    with closing(sqlite3.connect(f"file:{env.serve.db_path}?mode=ro", uri=True)) as db:
        rows = {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TABLES}
        runs = db.execute("SELECT run_id, mode, status, tickets_json FROM runs ORDER BY run_id").fetchall()
        agents = db.execute("SELECT run_id, agent_name, session_name, status, pane_pid, restarts_used "
                            "FROM run_agents ORDER BY run_id").fetchall()
        checkpoints = db.execute("SELECT * FROM forum_projection_checkpoints ORDER BY projection_name").fetchall()
    return {"rows": rows, "runs": runs, "agents": agents, "checkpoints": checkpoints, "tmux": sorted(env.sessions()),
            "worktrees": git(env.repo, "worktree", "list", "--porcelain"),
            "refs": git(env.repo, "for-each-ref", "--format=%(refname) %(objectname)"),
            "token": (env.serve.db_path.parent / "token").read_text()}


def attack_from(browser: Any, target: Target, site: AttackerSite, origin_host: str, log_in_first: bool) -> None:
    """Open the attacker's page (after the daemon's login link, if asked) and check every refusal."""
    env, names = target.env, [name for name, _, _ in attacks(target)]
    site.html = (PAGE % {"daemon": env.url, "attacks": json.dumps(attacks(target))}).encode()
    context = browser.new_context()
    try:
        page = context.new_page()
        if log_in_first:
            log_in(page, env.url)  # the login link, then about:blank: the UI is not left running
            assert [cookie["name"] for cookie in context.cookies(env.url)] == ["metawsm_session"]
        answered: list[Any] = []
        wire: list[dict[str, str]] = []  # request headers as Chromium put them on the wire (cookies included)
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.requestWillBeSentExtraInfo", lambda event: wire.append(event["headers"]))
        page.on("response", lambda r: answered.append(r) if r.url.startswith(env.url + "/") else None)
        page.goto(f"http://{origin_host}:{site.port}/")
        page.wait_for_function("window.done === true", timeout=20_000)
        results = page.evaluate("window.results")
        statuses = [(r.url, r.status, r.headers.get("access-control-allow-origin")) for r in answered]
        form = [r.json() for r in answered if r.request.resource_type == "document"]  # fetch bodies stay opaque
    finally:
        context.close()
    for name in names:  # the page cannot even tell whether a no-cors write arrived; CORS calls fail outright
        assert results[f"no-cors {name}"] == "answered: opaque 0", results
        assert results[f"cors {name}"] == "refused: TypeError", results  # its preflight was refused
    assert results["websocket"] == {"opened": False, "messages": 0, "code": 1006}, results
    assert results["form"] == "submitted", results
    # The daemon got each no-cors write and the form POST, and refused each: 403, no CORS header.
    assert len(statuses) == len(names) + 1 and all(s == 403 and not allow for _, s, allow in statuses), statuses
    assert [body["error"]["code"] for body in form] == ["forbidden_origin"], form
    # On the wire every write and preflight named its origin; the cookie went along only from 127.0.0.1 on
    # another port (the same site: SameSite=Strict does not stop it), and did not help.
    to_daemon = [h for h in wire if h.get("Host") == f"127.0.0.1:{env.serve.port}"]
    writes = [h for h in to_daemon if "Access-Control-Request-Method" not in h]
    assert len(writes) == len(names) + 1 and len(to_daemon) == 2 * len(names) + 1, to_daemon
    assert {h.get("Origin") for h in to_daemon} == {f"http://{origin_host}:{site.port}"}, to_daemon
    with_cookie = log_in_first and origin_host == "127.0.0.1"
    assert [("metawsm_session=" in h.get("Cookie", "")) for h in writes] == [with_cookie] * len(writes), writes


@pytest.mark.parametrize("log_in_first", [False, True], ids=["never-logged-in", "logged-in-first"])
def test_a_page_from_another_local_origin_can_neither_write_nor_drive_runs_nor_listen(
        browser: Any, target: Target, site: AttackerSite, log_in_first: bool) -> None:
    before = state(target.env)
    for origin_host in ("127.0.0.1", "localhost"):  # the same site (cookie sent when logged in), then another
        attack_from(browser, target, site, origin_host, log_in_first)
        assert state(target.env) == before, f"the page from {origin_host}:{site.port} changed something"
    assert target.session in target.env.sessions()
    assert target.env.snapshot(target.run_id)["status"] == "running"


WEBSOCKET = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
             "Sec-WebSocket-Version": "13"}
THREAD = {"ticket": "EVIL-3", "title": "rebound", "body": "hi"}


def raw(env: RunsEnv, method: str, path: str, headers: dict[str, str], body: Any = None,
        token: bool = True) -> tuple[int, Any]:
    """One HTTP/1.1 exchange with exactly these headers (``Host`` included), as a rebound page's would be."""
    data = b"" if body is None else json.dumps(body).encode()
    head = {"Host": f"127.0.0.1:{env.serve.port}", "Connection": "close", "Content-Type": "application/json",
            "Content-Length": str(len(data)), **({"Authorization": f"Bearer {token_for(env.url)}"} if token else {}),
            **headers}
    request = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", env.serve.port), timeout=10) as conn, conn.makefile("rb") as reply:
        conn.sendall(request.encode() + data)
        status = int(reply.readline().split()[1])
        fields = dict(line.decode().lower().split(":", 1) for line in iter(reply.readline, b"\r\n"))
        payload = reply.read(int(fields.get("content-length", "0")))
    return status, json.loads(payload) if payload else None


def test_a_foreign_host_or_origin_is_refused_even_with_the_operator_token_and_writes_nothing(target: Target) -> None:
    env, before = target.env, state(target.env)
    host, origin = {"Host": f"evil.example:{env.serve.port}"}, {"Origin": "http://evil.example"}
    stream, run = "/api/v1/forum/stream?cursor=0", f"/api/v1/runs/{target.run_id}"
    for headers, method, path, body, code in [
        (host, "GET", "/api/v1/forum/threads", None, "forbidden_host"),  # DNS rebinding: the page's own name
        (host, "POST", "/api/v1/forum/threads", THREAD, "forbidden_host"),
        (host, "POST", run + "/cleanup", {}, "forbidden_host"),
        (host | WEBSOCKET, "GET", stream, None, "forbidden_host"),
        (origin, "GET", "/api/v1/forum/threads", None, "forbidden_origin"),
        (origin, "POST", "/api/v1/forum/threads", THREAD, "forbidden_origin"),
        (origin, "POST", run + "/stop", {}, "forbidden_origin"),
        (origin | WEBSOCKET, "GET", stream, None, "forbidden_origin"),
    ]:
        status, payload = raw(env, method, path, headers, body)
        assert status == 403 and payload["error"]["code"] == code and payload["error"]["message"], \
            (headers, method, path, status, payload)
    assert state(env) == before
    # The same token under the daemon's own name and origin is served: the refusals were Host and Origin.
    assert raw(env, "GET", "/api/v1/forum/threads", {"Origin": env.url})[0] == 200


def test_the_server_of_another_local_origin_gets_no_session_it_could_replay(
        browser: Any, target: Target, site: AttackerSite) -> None:
    env, before = target.env, state(target.env)
    site.html = b"<!doctype html><title>just a page</title>"
    context = browser.new_context()
    try:
        page = context.new_page()
        log_in(page, env.url)
        page.goto(f"http://127.0.0.1:{site.port}/")  # the user, logged in, opens some other local page
    finally:
        context.close()
    received = "; ".join(cookie for cookie in site.cookies if cookie)
    # That page's server (no browser now: no Origin to check) replays whatever the browser sent it.
    status, payload = raw(env, "POST", "/api/v1/forum/threads", {"Cookie": received}, THREAD, token=False)
    assert status == 401 and state(env) == before, (
        f"the server on 127.0.0.1:{site.port} received Cookie: {received!r} and, replaying it to the daemon, "
        f"got {status} {payload}")


def test_the_daemons_own_page_with_its_session_cookie_still_streams_and_opens_a_thread(
        browser: Any, target: Target) -> None:
    env, before = target.env, state(target.env)
    context = browser.new_context()
    try:
        page = context.new_page()
        log_in(page, env.url)
        page.goto(env.url + "/")
        sync_api.expect(page.locator("#live-status")).to_have_text("live", timeout=10_000)  # its WebSocket is open
        answer = page.evaluate("""async () => {
            const body = JSON.stringify({ticket: "OK-1", title: "from the UI", body: "same origin"});
            const key = localStorage.getItem("metawsm.pageKey");  // what the UI's own requests carry
            const r = await fetch("/api/v1/forum/threads", {method: "POST", body,
                                  headers: {"Content-Type": "application/json", "X-Metawsm-Page-Key": key}});
            return {status: r.status, body: await r.json()};
        }""")
    finally:
        context.close()
    assert answer["status"] == 200 and answer["body"]["thread"]["ticket"] == "OK-1", answer
    after = state(env)
    assert after["rows"]["forum_threads"] == before["rows"]["forum_threads"] + 1
    unchanged = ("runs", "agents", "tmux", "worktrees", "refs", "token")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
