"""Health and the ``serve`` command: ok → degraded → ok with a Redis of our own, ``recovering``
while a child is restarted, 503 ``failed`` once the root supervisor gives up (and the process then exits by itself), the start-up
refusals of ``metawsm serve``, clean stops on SIGINT/SIGTERM, the embedded Redis, and the
README's first minutes as a new user would type them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from metawsm.transport.redis_process import RedisProcess, free_tcp_port
from metawsm.waiting import wait_until
from support.daemon import ServeProcess, policy_data
from support.http import auth_headers

HEALTH_FIELDS = {"status", "started_at", "now", "worker", "outbox", "forum_bus", "actors"}
WORKER_FIELDS = {"running", "last_processed_at", "total_processed", "consecutive_errors", "last_error", "lag"}
LAG_FIELDS = {"outbox_pending", "oldest_pending_age_seconds", "stream_pending", "projection_lag"}
OUTBOX_FIELDS = {"pending_count", "processing_count", "failed_count", "parked_count", "oldest_pending_age_seconds"}
PROJECTIONS = {"thread_views", "thread_stats", "queue_view", "control_state"}


def call(url: str, method: str = "GET", body: Any = None, timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body if body is not None else {}).encode() if method != "GET" else None
    headers = {"Content-Type": "application/json", **auth_headers(url)}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def health(server: ServeProcess) -> tuple[int, dict[str, Any]]:
    return call(server.url + "/api/v1/health")


def run_serve(cwd: Path, *args: str, timeout: float = 30, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "metawsm", "serve", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


# -- health ---------------------------------------------------------------------------------------


def test_health_ok_then_degraded_with_202_writes_then_ok_again(private_redis: RedisProcess, tmp_path: Path) -> None:
    policy = policy_data(private_redis.url, "health", write_wait_ms=1000)
    server = ServeProcess(tmp_path / "serve", policy).start()
    try:
        status, body = health(server)
        assert status == 200 and body["status"] == "ok", body
        assert HEALTH_FIELDS <= set(body)
        assert WORKER_FIELDS <= set(body["worker"])
        assert LAG_FIELDS <= set(body["worker"]["lag"])
        assert set(body["worker"]["lag"]["projection_lag"]) == PROJECTIONS
        assert OUTBOX_FIELDS <= set(body["outbox"])
        assert body["forum_bus"] == {"healthy": True, "redis_url": private_redis.url, "redis_mode": "external",
                                     "redis_reason": f"{private_redis.url} from policy forum.redis.url answered"}
        assert set(body["actors"]) == {"total", "alive", "restarting", "restarts_total"}
        assert body["actors"]["alive"] == body["actors"]["total"] >= 12
        status, opened = call(server.url + "/api/v1/forum/threads", "POST",
                              {"ticket": "H-1", "title": "before", "body": "b"})
        assert status == 200, opened

        private_redis.stop()
        down = wait_until(lambda: (b := health(server)[1])["status"] == "degraded" and b, timeout=20,
                          message="health degraded after Redis stopped")
        assert down["forum_bus"]["healthy"] is False and down["forum_bus"]["error"]
        status, accepted = call(server.url + "/api/v1/forum/threads", "POST",
                                {"ticket": "H-1", "title": "while redis is down", "body": "b"})
        assert status == 202, accepted
        assert accepted["accepted"] is True
        assert accepted["thread_id"].startswith("fthr_") and accepted["event_id"].startswith("fevt_")
        status, down = health(server)
        assert status == 200 and down["status"] == "degraded"
        assert down["worker"]["lag"]["outbox_pending"] >= 1 and down["outbox"]["pending_count"] >= 1
        assert down["worker"]["lag"]["stream_pending"] is None  # unknown while Redis is away

        private_redis.start()
        wait_until(lambda: health(server)[1]["status"] == "ok", timeout=30, message="health ok after Redis restart")
        detail = wait_until(lambda: (r := call(server.url + f"/api/v1/forum/threads/{accepted['thread_id']}"))[0] == 200
                            and r[1], timeout=30, message="the accepted write applied")
        assert detail["thread"]["title"] == "while redis is down"
        status, up = health(server)
        assert up["forum_bus"] == dict(body["forum_bus"], healthy=True)
        metrics = urllib.request.Request(server.url + "/metrics", headers=auth_headers(server.url))
        with urllib.request.urlopen(metrics, timeout=5) as response:
            assert 'metawsm_forum_writes_total{result="accepted"} 1' in response.read().decode()
    finally:
        assert server.stop() == 0, server.log()


def test_health_reports_failed_when_the_root_gives_up_and_the_process_exits(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    policy = policy_data(redis_url, redis_namespace)
    policy["supervision"] = {"max_restarts": 2, "within_seconds": 30, "backoff_initial_ms": 10, "backoff_max_ms": 20}
    server = ServeProcess(tmp_path / "serve", policy).start()
    assert server.process is not None

    def crash() -> bool:
        status, body = call(server.url + "/api/v1/debug/actors/root/forum/crash", "POST")
        if status == 404 and body["error"]["code"] == "actor_not_found":
            return False  # restarting from the previous crash
        assert status == 200, body
        return True

    try:
        for attempt in range(2):
            wait_until(crash, timeout=10, message=f"crash {attempt + 1}")
            wait_until(lambda: health(server)[1]["status"] in ("ok", "degraded") and _forum_running(server),
                       timeout=10, message="forum supervisor restarted")
        wait_until(crash, timeout=10, message="the crash that exceeds max_restarts")
        status, body = wait_until(lambda: (h := health(server))[0] == 503 and h, timeout=5,
                                  message="health failed")
        assert body["status"] == "failed"
        assert "gave up" in body["reason"] and "more than 2 restarts within 30s" in body["reason"]
        code = wait_until(lambda: server.process.poll(), timeout=15, message="serve exits by itself")
        assert code != 0
        assert "the root supervisor gave up" in server.log()
    finally:
        server.stop()


def _forum_running(server: ServeProcess) -> bool:
    status, body = call(server.url + "/api/v1/debug/actors")
    forum = [c for c in body["actors"]["children"] if c["path"] == "root/forum"]
    return status == 200 and bool(forum) and forum[0]["state"] == "running"


def test_health_says_recovering_while_a_child_is_restarted_then_ok(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    policy = policy_data(redis_url, redis_namespace)
    # The first restart after a quiet period is immediate; the next one of the same child waits
    # out the backoff, which here is long enough for health to be seen saying so.
    policy["supervision"] = {"max_restarts": 10, "within_seconds": 30, "backoff_initial_ms": 3000,
                             "backoff_max_ms": 3000}
    server = ServeProcess(tmp_path / "serve", policy).start()
    path = "root/forum/projections/thread_views"

    def crash(reason: str) -> bool:
        status, body = call(server.url + f"/api/v1/debug/actors/{path}/crash?reason={reason}", "POST")
        if status == 404 and body["error"]["code"] == "actor_not_found":
            return False  # still restarting from the previous crash
        assert status == 200, body
        return True

    try:
        assert health(server)[1]["status"] == "ok"
        wait_until(lambda: crash("first"), timeout=10, message="first crash")
        wait_until(lambda: _actor_state(server, path) == "running", timeout=10, message="restarted at once")
        wait_until(lambda: crash("second"), timeout=10, message="second crash")
        status, body = wait_until(lambda: (h := health(server))[1]["status"] == "recovering" and h, timeout=10,
                                  message="health recovering during the backoff")
        assert status == 200, body
        assert body["recovering"] == [{"path": path, "state": "restarting", "restarts": 2,
                                       "reason": "InjectedFault: second"}], body
        assert body["reason"] == f"{path} is restarting after InjectedFault: second", body
        assert body["actors"]["restarting"] >= 1
        status, body = wait_until(lambda: (h := health(server))[1]["status"] == "ok" and h, timeout=30,
                                  message="health ok once the child is back")
        assert status == 200 and "recovering" not in body and "reason" not in body, body
        assert body["actors"]["restarts_total"] == 2
    finally:
        assert server.stop() == 0, server.log()


def _actor_state(server: ServeProcess, path: str) -> str | None:
    status, body = call(server.url + "/api/v1/debug/actors")
    assert status == 200, body
    found = [n for n in _walk(body["actors"]) if n["path"] == path]
    return found[0]["state"] if found else None


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node] + [n for child in node.get("children", []) for n in _walk(child)]


def test_fault_injection_is_404_without_debug(redis_url: str, redis_namespace: str, tmp_path: Path) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace), debug=False).start()
    try:
        status, body = call(server.url + "/api/v1/debug/actors/root/forum/crash", "POST")
        assert status == 404 and body["error"]["code"] == "not_found", body
        assert "--debug" in body["error"]["message"]
        assert call(server.url + "/api/v1/debug/actors")[0] == 200  # inspection stays available
    finally:
        assert server.stop() == 0


# -- serve: start-up refusals and signals ---------------------------------------------------------


def write_policy(directory: Path, policy: Any) -> Path:
    path = directory / ".metawsm" / "policy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
    return path


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"forum": {"bogus": 1}}, 'error: policy: unknown field "bogus" at forum'),
        ({"forum": {"heartbeat_seconds": "soon"}}, "error: policy: forum.heartbeat_seconds: expected number, got str"),
        ({"supervision": {"max_restarts": 0}}, "error: supervision.max_restarts must be > 0"),
        ('{"forum": ', "error: policy: .metawsm/policy.json is not valid JSON"),
    ],
)
def test_serve_refuses_an_invalid_policy_with_exit_2(tmp_path: Path, policy: Any, message: str) -> None:
    write_policy(tmp_path, policy)
    result = run_serve(tmp_path, "--addr", f"127.0.0.1:{free_tcp_port()}")
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_with_unreachable_redis_and_embedded_never_exits_1(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_tcp_port()}/0"
    write_policy(tmp_path, {"forum": {"redis": {"url": dead, "embedded": "never"}}})
    result = run_serve(tmp_path, "--addr", f"127.0.0.1:{free_tcp_port()}")
    assert result.returncode == 1, result
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: forum redis ping failed: "), line
    assert line.endswith("; start Redis (redis-server --port 6379) or fix forum.redis.url"), line
    assert not (tmp_path / ".metawsm" / "redis").exists()


def test_serve_with_an_empty_redis_url_says_so(tmp_path: Path) -> None:
    write_policy(tmp_path, {"forum": {"redis": {"url": "  ", "embedded": "never"}}})
    result = run_serve(tmp_path, "--addr", f"127.0.0.1:{free_tcp_port()}")
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: forum redis url is empty"), result.stderr
    assert "forum.redis.url cannot be empty" in result.stderr


def test_serve_on_a_port_in_use_exits_1_with_a_readable_error(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_policy(tmp_path, policy_data(redis_url, redis_namespace))
        result = run_serve(tmp_path, "--addr", f"127.0.0.1:{port}")
    assert result.returncode == 1, result
    assert result.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: address already in use (another metawsm serve?); "
        "pick another --addr HOST:PORT"), result.stderr


def test_serve_rejects_a_bad_addr_with_exit_2(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--addr", "localhost")
    assert result.returncode == 2, result
    assert 'invalid --addr "localhost": expected HOST:PORT' in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_sigint_and_sigterm(
    redis_url: str, redis_namespace: str, tmp_path: Path, signum: signal.Signals
) -> None:
    server = ServeProcess(tmp_path / "serve", policy_data(redis_url, redis_namespace)).start()
    assert server.process is not None
    server.process.send_signal(signum)
    assert server.process.wait(timeout=15) == 0, server.log()
    log = server.log()
    assert "stopping: draining actors and closing connections" in log and log.rstrip().endswith("stopped")
    assert "Traceback" not in log
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "/api/v1/health", timeout=2)


# -- choosing Redis: --redis-url > METAWSM_REDIS_URL > policy > default ----------------------------


@pytest.mark.parametrize(
    ("args", "env", "source"),
    [
        (("--redis-url", "http://127.0.0.1:6379"), {}, "--redis-url"),
        ((), {"METAWSM_REDIS_URL": "127.0.0.1:6379"}, "METAWSM_REDIS_URL"),
    ],
)
def test_serve_refuses_a_url_that_is_not_redis_with_exit_2(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], source: str
) -> None:
    result = run_serve(tmp_path, "--addr", f"127.0.0.1:{free_tcp_port()}", *args, env=env)
    assert result.returncode == 2, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {source} "), result.stderr
    assert "is not a Redis URL" in result.stderr
    assert not (tmp_path / ".metawsm").exists()


def test_redis_url_flag_beats_environment_and_policy_and_health_says_why(
    redis_url: str, redis_namespace: str, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_tcp_port()}/0"
    policy = policy_data(dead, redis_namespace)
    policy["forum"]["redis"]["embedded"] = "never"
    server = ServeProcess(tmp_path / "serve", policy, extra_args=("--redis-url", redis_url),
                          env={"METAWSM_REDIS_URL": dead}).start()
    try:
        status, body = health(server)
        assert status == 200, body
        bus = body["forum_bus"]
        assert bus["redis_mode"] == "external"
        assert bus["redis_reason"] == f"{bus['redis_url']} from --redis-url answered"
        assert f"redis: {bus['redis_url']} ({bus['redis_reason']})" in server.log()
    finally:
        server.stop()


def test_an_explicit_redis_url_that_does_not_answer_is_never_replaced_by_a_private_one(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_tcp_port()}/0"
    result = run_serve(tmp_path, "--addr", f"127.0.0.1:{free_tcp_port()}", env={"METAWSM_REDIS_URL": dead})
    assert result.returncode == 1, result
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: forum redis ping failed: "), line
    assert line.endswith("or fix METAWSM_REDIS_URL"), line
    assert not (tmp_path / ".metawsm" / "redis").exists()


# -- embedded Redis and the README's first minutes -------------------------------------------------


def test_a_new_user_follows_the_readme_with_an_embedded_redis(tmp_path: Path) -> None:
    """`policy-init`, then `metawsm serve` on a port of our own; Redis at the policy's URL does not
    answer, so serve (embedded: auto) starts a private redis-server under .metawsm/redis/."""
    home = tmp_path / "project"
    home.mkdir()
    init = subprocess.run([sys.executable, "-m", "metawsm", "policy-init"], cwd=home, capture_output=True,
                          text=True, timeout=30)
    assert init.returncode == 0, init
    policy_path = home / ".metawsm" / "policy.json"
    policy = json.loads(policy_path.read_text())
    assert policy["forum"]["redis"]["embedded"] == "auto"
    policy["forum"]["redis"]["url"] = f"redis://127.0.0.1:{free_tcp_port()}/0"  # nobody listens there
    policy_path.write_text(json.dumps(policy))

    port = free_tcp_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "metawsm", "serve", "--addr", f"127.0.0.1:{port}"],
                                   cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        def up() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                return call(url + "/api/v1/health", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(up, timeout=30, message="serve answering")
        text = log_path.read_text()
        assert "did not answer" in text and "starting a private redis-server" in text, text
        assert "embedded redis at" in text
        assert (home / ".metawsm" / "metawsm.db").exists()
        assert (home / ".metawsm" / "redis").is_dir()

        # The README's commands, as typed (curl and jq when the machine has them).
        if shutil.which("curl") and shutil.which("jq"):
            for path in ("/api/v1/health", "/api/v1/forum/stats"):
                shown = subprocess.run(f"curl -s {url}{path} | jq", shell=True, capture_output=True, text=True,
                                       timeout=30)
                assert shown.returncode == 0 and shown.stdout.startswith("{\n"), shown
        status, body = call(url + "/api/v1/health")
        assert status == 200 and body["status"] == "ok", body
        embedded_url = body["forum_bus"]["redis_url"]
        assert embedded_url.startswith("unix://"), embedded_url
        assert body["forum_bus"]["redis_mode"] == "embedded"
        assert body["forum_bus"]["redis_reason"].startswith("private redis-server started: redis://127.0.0.1:")
        assert "from default forum.redis.url" not in body["forum_bus"]["redis_reason"]  # the policy names it
        assert redis.Redis.from_url(embedded_url).ping()
        env = dict(os.environ, METAWSM_SERVER=url)

        def cli(*args: str) -> str:
            done = subprocess.run([sys.executable, "-m", "metawsm", *args], cwd=home, env=env, capture_output=True,
                                  text=True, timeout=30)
            assert done.returncode == 0, done
            return done.stdout

        assert cli("health").startswith("status: ok")
        thread_id = cli("forum", "ask", "--ticket", "DEMO-1", "--title", "Which DB?",
                        "--body", "Postgres or SQLite?").split()[0]
        assert thread_id.startswith("fthr_")
        assert thread_id in cli("forum", "list")
        status, stats = call(url + "/api/v1/forum/stats")
        assert stats == {"stats": [{"ticket": "DEMO-1", "run_id": "", "state": "new", "priority": "normal",
                                    "thread_count": 1}]}
        # without --debug there is no fault injection
        assert call(url + "/api/v1/debug/actors/root/forum/crash", "POST")[0] == 404

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, log_path.read_text()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(embedded_url, socket_connect_timeout=1).ping()  # stopped with serve
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
