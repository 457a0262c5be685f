"""The HTTP facade route by route, against a real ``metawsm serve --debug`` and a real Redis.

One daemon serves the whole module (its own database and stream namespace); every test makes
its own tickets so that the tests do not see each other's threads.  The contract is
docs/api.md: the error shape ``{"error": {"code", "message"}}``, strict decoding,
the status codes, and never a 500 for bad input.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from metawsm.waiting import wait_until
from support.daemon import ServeProcess, serving
from support.http import auth_headers
from support.processes import short_id

MIB = 1024 * 1024


# -- plumbing -------------------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    def error(self, status: int, code: str) -> str:
        """Assert the error shape, status and code; return the message."""
        assert self.status == status, (self.status, self.body[:500])
        assert self.headers.get("Content-Type", "").startswith("application/json"), self.headers
        body = self.json
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] == code, body
        message = body["error"]["message"]
        assert isinstance(message, str) and message.strip(), body
        return message


class Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Reply:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None or method != "GET":
            request.add_header("Content-Type", "application/json")  # what the API takes for every write
        for key, value in {**auth_headers(self.url), **(headers or {})}.items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Reply(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Reply(error.code, dict(error.headers), error.read())

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.call("POST", path, body, **kwargs)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.call(method, path, body)
        assert reply.status == 200, (method, path, reply.status, reply.body[:500])
        return reply.json

    def open_thread(self, ticket: str, **fields: Any) -> dict[str, Any]:
        body = {"ticket": ticket, "title": fields.pop("title", "Which DB?"), "body": fields.pop("body", "Postgres?")}
        body.update(fields)
        return self.ok("POST", "/api/v1/forum/threads", body)["thread"]


def ticket() -> str:
    return f"API-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(redis_server.url, tmp_path_factory.mktemp("api-routes")) as process:
        yield process
    assert "internal error" not in process.log(), process.log()


@pytest.fixture
def api(server: ServeProcess) -> Api:
    return Api(server.url)


# -- index, HEAD, unknown routes, methods ----------------------------------------------------------


def test_index_page_links_the_api_document(api: Api) -> None:
    reply = api.get("/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert 'href="/api/v1/openapi.json"' in reply.text
    assert api.call("HEAD", "/").status == 200
    assert api.call("HEAD", "/api/v1/health").status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/nope"),
        ("GET", "/api/v2/health"),
        ("GET", "/api/v1/forum"),
        ("POST", "/api/v1/forum/threads/x/bogus"),
        ("POST", "/api/v1/runs/r/bogus"),
        ("GET", "/favicon.ico"),
    ],
)
def test_unknown_route_is_404_not_found(api: Api, method: str, path: str) -> None:
    api.call(method, path, {} if method == "POST" else None).error(404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/v1/forum/threads", {"GET", "HEAD", "POST"}),
        ("DELETE", "/api/v1/health", {"GET", "HEAD"}),
        ("POST", "/api/v1/health", {"GET", "HEAD"}),
        ("GET", "/api/v1/forum/control/signal", {"POST"}),
        ("PATCH", "/api/v1/forum/threads/x/posts", {"POST"}),
        ("GET", "/api/v1/forum/rebuild", {"POST"}),
        ("POST", "/api/v1/runs/r/actors", {"GET", "HEAD"}),
        ("GET", "/api/v1/runs/r/stop", {"POST"}),
        ("POST", "/metrics", {"GET", "HEAD"}),
    ],
)
def test_wrong_method_is_405_with_allow_header(api: Api, method: str, path: str, allowed: set[str]) -> None:
    reply = api.call(method, path, {} if method in ("POST", "PUT", "PATCH") else None)
    reply.error(405, "method_not_allowed")
    assert set(reply.headers["Allow"].split(",")) == allowed


# -- writes ---------------------------------------------------------------------------------------


THREAD_FIELDS = {"thread_id", "ticket", "title", "state", "priority", "opened_by_type", "posts_count",
                 "last_event_sequence", "opened_at", "updated_at"}


def test_every_write_route_answers_200_with_the_projected_thread(api: Api) -> None:
    tk = ticket()
    thread = api.open_thread(tk, run_id="RUN-1", agent_name="agent", priority="high", actor_type="agent",
                             actor_name="bot")
    assert THREAD_FIELDS <= set(thread)
    assert thread["thread_id"].startswith("fthr_")
    assert (thread["ticket"], thread["run_id"], thread["agent_name"]) == (tk, "RUN-1", "agent")
    assert (thread["state"], thread["priority"], thread["posts_count"]) == ("new", "high", 1)
    assert (thread["opened_by_type"], thread["opened_by_name"]) == ("agent", "bot")
    assert "closed_at" not in thread and "assignee_name" not in thread  # empty/null optionals are omitted
    tid = thread["thread_id"]
    base = f"/api/v1/forum/threads/{tid}"

    posted = api.ok("POST", base + "/posts", {"body": "more context", "actor_name": "bot", "actor_type": "agent"})
    assert posted["thread"]["posts_count"] == 2
    assigned = api.ok("POST", base + "/assign", {"assignee_type": "operator", "assignee_name": "ops",
                                                 "assignment_note": "yours"})["thread"]
    assert (assigned["assignee_type"], assigned["assignee_name"]) == ("operator", "ops")
    assert api.ok("POST", base + "/state", {"to_state": "triaged"})["thread"]["state"] == "triaged"
    assert api.ok("POST", base + "/priority", {"priority": "urgent"})["thread"]["priority"] == "urgent"
    answered = api.ok("POST", base + "/answer", {"body": "SQLite for now"})["thread"]
    assert (answered["state"], answered["posts_count"], answered["last_post_by_type"]) == ("answered", 3, "operator")
    seen = api.ok("POST", base + "/seen", {"viewer_type": "human", "viewer_id": "me"})["seen"]
    assert (seen["thread_id"], seen["viewer_id"]) == (tid, "me")
    assert seen["last_seen_event_sequence"] == answered["last_event_sequence"]
    closed = api.ok("POST", base + "/close", None)["thread"]  # an empty body is {}
    assert closed["state"] == "closed" and closed["closed_at"]
    assert api.ok("POST", base + "/close", {})["thread"]["state"] == "closed"  # idempotent

    detail = api.ok("GET", base)
    assert set(detail) == {"thread", "posts", "events"}
    assert [p["body"] for p in detail["posts"]] == ["Postgres?", "more context", "SQLite for now"]
    assert {"post_id", "thread_id", "event_id", "author_type", "body", "created_at"} <= set(detail["posts"][0])
    sequences = [e["sequence"] for e in detail["events"]]
    assert sequences == sorted(sequences) and len(sequences) == 8
    assert set(detail["events"][0]) == {"sequence", "envelope", "payload_json"}
    assert detail["events"][0]["envelope"]["event_type"] == "forum.thread.opened"


def test_open_with_a_thread_id_is_idempotent_and_reuse_with_other_content_is_409(api: Api) -> None:
    tk = ticket()
    tid = f"fthr_{uuid.uuid4().hex[:12]}"
    first = api.open_thread(tk, thread_id=tid)
    again = api.open_thread(tk, thread_id=tid)
    assert first["thread_id"] == again["thread_id"] == tid
    assert again["last_event_sequence"] == first["last_event_sequence"]
    body = {"thread_id": tid, "ticket": tk, "title": "another title", "body": "Postgres?"}
    api.post("/api/v1/forum/threads", body).error(409, "conflict")


def test_control_signal_opens_one_control_thread_per_run_and_agent(api: Api) -> None:
    tk, run = ticket(), f"RUN-{short_id()}"

    def signal(payload: dict[str, Any]) -> Reply:
        body = {"run_id": run, "ticket": tk, "agent_name": "agent",
                "payload": {"schema_version": 1, "run_id": run, "agent_name": "agent", **payload}}
        return api.post("/api/v1/forum/control/signal", body)

    first = signal({"control_type": "guidance_request", "question": "Need decision"})
    assert first.status == 200, first.body
    thread = first.json["thread"]
    assert (thread["run_id"], thread["agent_name"], thread["title"]) == (run, "agent", "Control: agent")
    second = signal({"control_type": "validation", "status": "passed", "done_criteria": "tests pass"})
    assert second.json["thread"]["thread_id"] == thread["thread_id"]
    assert second.json["thread"]["posts_count"] == 2
    message = signal({"control_type": "guidance_request"}).error(400, "forum_control_signal_failed")
    assert message == "forum control guidance_request requires question"
    message = signal({"control_type": "validation", "status": "maybe", "done_criteria": "x"}).error(
        400, "forum_control_signal_failed")
    assert message == "forum control validation status must be passed|failed"


def test_refused_writes_are_400_with_the_rules_message(api: Api) -> None:
    tk = ticket()
    tid = api.open_thread(tk)["thread_id"]
    base = f"/api/v1/forum/threads/{tid}"
    message = api.post("/api/v1/forum/threads", {"ticket": tk, "title": "  ", "body": "b"}).error(
        400, "forum_open_failed")
    assert "title" in message
    message = api.post("/api/v1/forum/threads", {"ticket": tk, "title": "t", "body": "b", "priority": "asap"}).error(
        400, "forum_open_failed")
    assert message == 'invalid priority "asap": must be one of low, normal, high, urgent'
    message = api.post(base + "/posts", {"body": "x", "actor_type": "robot"}).error(400, "forum_add_post_failed")
    assert "agent, operator, human, system" in message
    api.post(base + "/state", {"to_state": "done"}).error(400, "forum_state_failed")
    api.post(base + "/assign", {"assignee_type": "nobody", "assignee_name": "x"}).error(400, "forum_assign_failed")
    api.post(base + "/seen", {"viewer_type": "operator", "viewer_id": "me"}).error(400, "invalid_value")
    api.ok("POST", base + "/state", {"to_state": "answered"})
    message = api.post(base + "/state", {"to_state": "new"}).error(400, "forum_state_failed")
    assert message == "forum state transition answered -> new is not allowed"
    api.ok("POST", base + "/close", {})
    message = api.post(base + "/posts", {"body": "too late"}).error(400, "forum_add_post_failed")
    assert message == f"forum thread {tid} is closed"
    api.post(base + "/priority", {"priority": "low"}).error(400, "forum_priority_failed")


@pytest.mark.parametrize(
    ("suffix", "body"),
    [
        ("", None),
        ("/posts", {"body": "x"}),
        ("/answer", {"body": "x"}),
        ("/assign", {"assignee_type": "operator", "assignee_name": "ops"}),
        ("/state", {"to_state": "triaged"}),
        ("/priority", {"priority": "low"}),
        ("/close", {}),
        ("/seen", {"viewer_type": "human", "viewer_id": "me"}),
    ],
)
def test_unknown_thread_is_404_forum_thread_not_found(api: Api, suffix: str, body: Any) -> None:
    method = "GET" if not suffix else "POST"
    message = api.call(method, f"/api/v1/forum/threads/fthr_missing{suffix}", body).error(
        404, "forum_thread_not_found")
    assert message == "forum thread fthr_missing not found"


# -- strict decoding, size limit, never a 500 ------------------------------------------------------


WRITE_ROUTES = ["/api/v1/forum/threads", "/api/v1/forum/threads/{tid}/posts", "/api/v1/forum/threads/{tid}/answer",
                "/api/v1/forum/threads/{tid}/assign", "/api/v1/forum/threads/{tid}/state",
                "/api/v1/forum/threads/{tid}/priority", "/api/v1/forum/threads/{tid}/close",
                "/api/v1/forum/threads/{tid}/seen", "/api/v1/forum/control/signal", "/api/v1/forum/rebuild"]


@pytest.fixture(scope="module")
def some_thread(server: ServeProcess) -> str:
    return Api(server.url).open_thread(ticket())["thread_id"]


@pytest.mark.parametrize("route", WRITE_ROUTES)
@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"ticket', "not valid JSON"),
        (b"not json at all", "not valid JSON"),
        (b'{"unexpected_field": 1}', "unknown field unexpected_field"),
        (b"[1, 2]", "Expected object, got array"),
        (b'"a string"', "Expected object"),
        (b'{"\xff\xfe": 1}', "not valid UTF-8"),
    ],
)
def test_bad_bodies_are_400_invalid_json(api: Api, some_thread: str, route: str, raw: bytes, fragment: str) -> None:
    message = api.post(route.format(tid=some_thread), raw=raw).error(400, "invalid_json")
    assert fragment in message


@pytest.mark.parametrize(
    ("route", "body", "fragment"),
    [
        ("/api/v1/forum/threads", {"ticket": 1, "title": "t", "body": "b"}, "Expected str, got int - at ticket"),
        ("/api/v1/forum/threads", {"ticket": "x", "title": "t"}, "missing required field body"),
        ("/api/v1/forum/threads", {"ticket": "x", "title": "t", "body": "b", "priority": 3}, "at priority"),
        ("/api/v1/forum/threads/{tid}/seen", {"viewer_type": "human", "viewer_id": "me",
                                              "last_seen_event_sequence": -1}, "last_seen_event_sequence"),
        ("/api/v1/forum/threads/{tid}/state", {"to_state": ["closed"]}, "at to_state"),
        ("/api/v1/forum/control/signal", {"run_id": "r", "ticket": "t", "agent_name": "a", "payload": "x"},
         "Expected object, got str - at payload"),
        ("/api/v1/forum/rebuild", {"projection": True}, "at projection"),
    ],
)
def test_wrong_types_are_400_invalid_json_naming_the_field(
    api: Api, some_thread: str, route: str, body: Any, fragment: str
) -> None:
    message = api.post(route.format(tid=some_thread), body).error(400, "invalid_json")
    assert fragment in message


@pytest.mark.parametrize("route", ["/api/v1/forum/threads", "/api/v1/forum/threads/{tid}/posts",
                                   "/api/v1/forum/control/signal", "/api/v1/forum/rebuild"])
def test_body_over_1_mib_is_413_payload_too_large(api: Api, some_thread: str, route: str) -> None:
    raw = b'{"body": "' + b"x" * MIB + b'"}'
    message = api.post(route.format(tid=some_thread), raw=raw).error(413, "payload_too_large")
    assert "1048576 bytes" in message


def test_a_body_just_under_1_mib_is_accepted(api: Api) -> None:
    text = "y" * (MIB - 200)
    thread = api.open_thread(ticket(), body=text)
    detail = api.ok("GET", f"/api/v1/forum/threads/{thread['thread_id']}")
    assert detail["posts"][0]["body"] == text


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"ticket": "a\\u0000b", "title": "\\ud800", "body": "b"}',
        b'{"ticket": "' + "\u202e\u0000\U0001f600".encode() + b'", "title": "t", "body": "b"}',
        b'{"ticket": "x", "title": "t", "body": "b", "priority": "' + b"p" * 10_000 + b'"}',
        b'{"ticket": "x", "title": "t", "body": "b", "thread_id": "../../etc/passwd"}',
        b'{"ticket": "x", "title": "t", "body": "b", "thread_id": "' + b"a" * 500 + b'"}',
        b'{"ticket": 1e999, "title": "t", "body": "b"}',
        b'{"ticket": "x", "title": "t", "body": "b", "ticket": "y"}',
        b"\x00\x01\x02",
    ],
)
def test_hostile_bodies_never_get_a_5xx(api: Api, raw: bytes) -> None:
    reply = api.post("/api/v1/forum/threads", raw=raw)
    assert 200 <= reply.status < 500, (reply.status, reply.body[:300])
    if reply.status >= 400:
        reply.error(reply.status, reply.json["error"]["code"])


# -- queries --------------------------------------------------------------------------------------


def test_list_filters_search_queues_events_and_stats(api: Api) -> None:
    tk = ticket()
    a = api.open_thread(tk, title="Alpha migration plan", run_id="RUN-A", priority="high")
    b = api.open_thread(tk, title="Beta rollout", run_id="RUN-B", actor_type="agent", actor_name="bot")
    api.ok("POST", f"/api/v1/forum/threads/{b['thread_id']}/assign",
           {"assignee_type": "operator", "assignee_name": "ops"})

    def ids(path: str) -> list[str]:
        return [t["thread_id"] for t in api.ok("GET", path)["threads"]]

    assert ids(f"/api/v1/forum/threads?ticket={tk}") == [b["thread_id"], a["thread_id"]]  # newest update first
    assert ids(f"/api/v1/forum/threads?ticket={tk}&run_id=RUN-A") == [a["thread_id"]]
    assert ids(f"/api/v1/forum/threads?ticket={tk}&priority=high") == [a["thread_id"]]
    assert ids(f"/api/v1/forum/threads?ticket={tk}&assignee=ops") == [b["thread_id"]]
    assert ids(f"/api/v1/forum/threads?ticket={tk}&state=closed") == []
    assert ids(f"/api/v1/forum/threads?ticket={tk}&state=") == [b["thread_id"], a["thread_id"]]  # empty = any
    assert len(ids(f"/api/v1/forum/threads?ticket={tk}&limit=1")) == 1

    viewer = api.ok("GET", f"/api/v1/forum/threads?ticket={tk}&viewer_type=human&viewer_id=me")["threads"]
    assert all(t["is_unseen"] is True for t in viewer)

    page = api.ok("GET", f"/api/v1/forum/search?query=migration&ticket={tk}")
    assert [t["thread_id"] for t in page["threads"]] == [a["thread_id"]] and page["next_cursor"] is None
    first = api.ok("GET", f"/api/v1/forum/search?query=rollout%20OR%20plan&ticket={tk}&limit=1")
    assert len(first["threads"]) <= 1

    # unanswered: the last post is an agent's (b); unseen: anything the viewer has not seen (both).
    # The queues are their own projection, applied just after thread_views (docs/api.md).
    unanswered = f"/api/v1/forum/queues?type=unanswered&viewer_type=human&viewer_id=me&ticket={tk}"
    queue = wait_until(lambda: (q := api.ok("GET", unanswered))["threads"] and q, timeout=5,
                       message="the unanswered queue to show b")
    assert [t["thread_id"] for t in queue["threads"]] == [b["thread_id"]]
    assert queue["next_cursor"] is None
    unseen = api.ok("GET", f"/api/v1/forum/queues?type=unseen&viewer_type=human&viewer_id=me&ticket={tk}&limit=1")
    assert len(unseen["threads"]) == 1 and unseen["next_cursor"]
    rest = api.ok("GET", f"/api/v1/forum/queues?type=unseen&viewer_type=human&viewer_id=me&ticket={tk}"
                         f"&cursor={unseen['next_cursor']}")
    assert {t["thread_id"] for t in unseen["threads"] + rest["threads"]} == {a["thread_id"], b["thread_id"]}

    events = api.ok("GET", f"/api/v1/forum/events?ticket={tk}")
    sequences = [e["sequence"] for e in events["events"]]
    assert len(sequences) == 3 and sequences == sorted(sequences)
    assert events["next_cursor"] == sequences[-1]
    after = api.ok("GET", f"/api/v1/forum/events?ticket={tk}&cursor={sequences[0]}&limit=1")
    assert [e["sequence"] for e in after["events"]] == [sequences[1]]
    assert api.ok("GET", f"/api/v1/forum/events?ticket={tk}&cursor={sequences[-1]}") == {
        "events": [], "next_cursor": sequences[-1]}

    stats = api.ok("GET", f"/api/v1/forum/stats?ticket={tk}")["stats"]
    assert sum(row["thread_count"] for row in stats) == 2
    assert {"ticket", "run_id", "state", "priority", "thread_count"} == set(stats[0])


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/forum/threads?limit=0", "invalid_limit"),
        ("/api/v1/forum/threads?limit=501", "invalid_limit"),
        ("/api/v1/forum/threads?limit=abc", "invalid_limit"),
        ("/api/v1/forum/threads?limit=-5", "invalid_limit"),
        ("/api/v1/forum/events?limit=1001", "invalid_limit"),
        ("/api/v1/forum/debug?limit=0", "invalid_limit"),
        ("/api/v1/forum/events?cursor=-1", "invalid_cursor"),
        ("/api/v1/forum/events?cursor=abc", "invalid_cursor"),
        ("/api/v1/forum/events?cursor=99999999999999999999999", "invalid_cursor"),
        ("/api/v1/forum/search?query=x&cursor=not-a-cursor", "invalid_cursor"),
        ("/api/v1/forum/queues?type=unseen&viewer_type=human&viewer_id=me&cursor=%25%25", "invalid_cursor"),
        ("/api/v1/forum/threads?state=bogus", "invalid_filter"),
        ("/api/v1/forum/threads?priority=asap", "invalid_filter"),
        ("/api/v1/forum/threads?viewer_type=human", "invalid_filter"),
        ("/api/v1/forum/threads?viewer_type=robot&viewer_id=me", "invalid_filter"),
        ("/api/v1/forum/search", "invalid_filter"),
        ("/api/v1/forum/search?query=%20%20", "invalid_filter"),
        ("/api/v1/forum/queues?type=everything&viewer_type=human&viewer_id=me", "invalid_filter"),
        ("/api/v1/forum/queues?type=unseen", "invalid_filter"),
        ("/api/v1/forum/threads/x?viewer_id=me", "invalid_filter"),
    ],
)
def test_bad_query_parameters_are_400_with_their_code(api: Api, path: str, code: str) -> None:
    api.get(path).error(400, code)


# -- runs (not hosted yet) ------------------------------------------------------------------------


def test_unknown_runs_are_404_and_bad_run_requests_400(api: Api) -> None:
    assert api.ok("GET", "/api/v1/runs") == {"runs": []}
    assert api.ok("GET", "/api/v1/runs?ticket=T-1&status=running") == {"runs": []}
    api.get("/api/v1/runs?status=bogus").error(400, "invalid_filter")
    assert api.get("/api/v1/runs/RUN-1").error(404, "run_not_found") == "run RUN-1 not found"
    api.get("/api/v1/runs/RUN-1/actors").error(404, "run_not_found")
    for action in ("stop", "resume", "restart", "close", "cleanup"):
        api.post(f"/api/v1/runs/RUN-1/{action}", {}).error(404, "run_not_found")
    api.post("/api/v1/runs", {"ticket": "T-1"}).error(400, "invalid_json")
    api.post("/api/v1/runs", {"mode": "bootstrap", "tickets": ["T-1"], "repos": ["r"]}).error(400, "run_brief_incomplete")


# -- metrics --------------------------------------------------------------------------------------


METRICS = {
    "metawsm_forum_writes_total": "counter",
    "metawsm_forum_write_seconds": "histogram",
    "metawsm_forum_outbox_pending": "gauge",
    "metawsm_forum_projection_lag": "gauge",
    "metawsm_forum_bus_healthy": "gauge",
    "metawsm_forum_stream_entries_processed_total": "counter",
    "metawsm_forum_parked_total": "counter",
    "metawsm_actor_restarts_total": "counter",
    "metawsm_actors": "gauge",
    "metawsm_websocket_clients": "gauge",
    "metawsm_websocket_frames_total": "counter",
    "metawsm_websocket_slow_closed_total": "counter",
    "metawsm_http_errors_total": "counter",
}
SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{(?P<labels>[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*)\})? (?P<value>\S+)$')


def parse_metrics(text: str) -> tuple[dict[str, str], dict[str, float]]:
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line.startswith("# HELP ") or not line:
            continue
        else:
            match = SAMPLE.match(line)
            assert match, f"not a Prometheus sample line: {line!r}"
            key = match["name"] + (f"{{{match['labels']}}}" if match["labels"] else "")
            samples[key] = float(match["value"])
    return types, samples


def test_metrics_are_prometheus_text_with_the_documented_names(api: Api) -> None:
    before = parse_metrics(api.get("/metrics").text)[1]
    api.open_thread(ticket())
    api.get("/api/v1/forum/threads?limit=0")
    reply = api.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = parse_metrics(reply.text)
    assert types == METRICS
    applied = 'metawsm_forum_writes_total{result="applied"}'
    assert samples[applied] >= before[applied] + 1
    assert samples["metawsm_forum_write_seconds_count"] >= 1
    assert samples['metawsm_forum_write_seconds_bucket{le="+Inf"}'] == samples["metawsm_forum_write_seconds_count"]
    assert samples['metawsm_http_errors_total{status="400"}'] >= 1
    assert samples["metawsm_forum_bus_healthy"] == 1
    assert samples['metawsm_forum_projection_lag{projection="thread_views"}'] >= 0
    assert samples['metawsm_actors{state="alive"}'] >= 12


# -- debug: pipeline snapshot, actor tree, fault injection, rebuild, parked ------------------------


def test_forum_debug_shows_real_stream_keys(api: Api, server: ServeProcess, redis_server: Any) -> None:
    tk = ticket()
    api.open_thread(tk, run_id="RUN-D")
    debug = api.ok("GET", f"/api/v1/forum/debug?ticket={tk}&limit=5")["debug"]
    assert {"generated_at", "outbox", "outbox_messages", "parked", "events", "threads", "control_threads",
            "bus"} <= set(debug)
    assert debug["ticket"] == tk
    assert [t["ticket"] for t in debug["threads"]] == [tk]
    assert [e["envelope"]["ticket"] for e in debug["events"]] == [tk]
    bus = debug["bus"]
    assert bus["healthy"] is True and bus["running"] is True
    assert bus["redis_url"] == redis_server.url
    topics = {t["topic"]: t for t in bus["topics"]}
    assert "forum.commands.open_thread" in topics and "forum.events.thread.opened" in topics
    existing = [t for t in bus["topics"] if t["stream_exists"]]
    assert {"forum.commands.open_thread", "forum.events.thread.opened"} <= {t["topic"] for t in existing}
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        for topic in existing:
            assert topic["stream"].startswith(bus["stream_name"] + ".")
            info = client.xinfo_stream(topic["stream"])  # what `redis-cli XINFO STREAM <key>` shows
            assert info["length"] >= 1
            assert topic["stream_length"] >= 1
            if topic["consumer_group_present"]:
                groups = {g["name"] for g in client.xinfo_groups(topic["stream"])}
                assert bus["consumer_group"] in groups
    finally:
        client.close()


EXPECTED_ACTORS = {
    "root": "RootSupervisor",
    "root/forum": "ForumSupervisor",
    "root/forum/intake": "CommandIntake",
    "root/forum/relay": "OutboxRelay",
    "root/forum/consumer": "StreamConsumer",
    "root/forum/handler": "CommandHandler",
    "root/forum/projections": "ProjectionSupervisor",
    "root/forum/projections/thread_views": "Projection[thread_views]",
    "root/forum/projections/thread_stats": "Projection[thread_stats]",
    "root/forum/projections/queue_view": "Projection[queue_view]",
    "root/forum/projections/control_state": "Projection[control_state]",
    "root/forum/broker": "EventBroker",
    "root/runs": "RunSupervisor",
    "root/operator": "Operator",
}
NODE_FIELDS = {"name", "path", "kind", "state", "urn", "started_at", "restarts", "processed", "mailbox", "details",
               "children"}


def actor_nodes(api: Api) -> dict[str, dict[str, Any]]:
    nodes: dict[str, dict[str, Any]] = {}

    def walk(node: dict[str, Any]) -> None:
        nodes[node["path"]] = node
        for child in node["children"]:
            walk(child)

    walk(api.ok("GET", "/api/v1/debug/actors")["actors"])
    return nodes


def test_actor_tree_lists_every_actor_with_its_fields(api: Api) -> None:
    nodes = actor_nodes(api)
    assert {path: node["name"] for path, node in nodes.items()} == EXPECTED_ACTORS
    for path, node in nodes.items():
        assert NODE_FIELDS <= set(node), (path, set(node))
        assert node["state"] in ("starting", "running", "restarting", "stopped", "failed")
        if "/" in path:
            assert path.rsplit("/", 1)[0] in nodes
    assert nodes["root/forum/projections/thread_views"]["kind"] == "projection"
    assert all(node["state"] == "running" for node in nodes.values())


def test_fault_injection_restarts_a_projection_while_writes_continue(api: Api) -> None:
    path = "root/forum/projections/thread_views"
    restarts_before = actor_nodes(api)[path]["restarts"]
    tk = ticket()
    statuses: list[int] = []
    stop = threading.Event()

    def writer() -> None:
        index = 0
        while not stop.is_set() or index < 20:
            reply = api.post("/api/v1/forum/threads", {"ticket": tk, "title": f"t{index}", "body": "b"})
            statuses.append(reply.status)
            index += 1

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(writer)
        for crash in range(3):
            wait_until(lambda: len(statuses) >= 5 * (crash + 1), timeout=20, message="writes progressing")
            reply = wait_until(lambda: _crash(api, path), timeout=10, message=f"crash {path}")
            assert reply == {"crashed": path, "reason": "injected fault"}
            wait_until(lambda: actor_nodes(api)[path]["restarts"] >= restarts_before + crash + 1, timeout=10,
                       message="restart counted")
        stop.set()
        future.result(timeout=60)
    assert statuses and set(statuses) == {200}, statuses
    node = wait_until(lambda: (n := actor_nodes(api)[path])["state"] == "running" and n, timeout=10)
    assert node["restarts"] == restarts_before + 3
    assert node["last_failure"]["type"] == "InjectedFault"
    assert node["last_failure"]["message"] == "injected fault"
    listed = api.ok("GET", f"/api/v1/forum/threads?ticket={tk}&limit=500")["threads"]
    assert len(listed) == len(statuses)
    health = api.ok("GET", "/api/v1/health")
    assert health["actors"]["restarts_total"] >= 3
    assert wait_until(lambda: api.ok("GET", "/api/v1/health")["worker"]["lag"]["projection_lag"]["thread_views"] == 0
                      or None, timeout=10) is True


def _crash(api: Api, path: str) -> Any:
    reply = api.post(f"/api/v1/debug/actors/{path}/crash")
    if reply.status == 404 and reply.json["error"]["code"] == "actor_not_found":
        return None  # still restarting from the previous crash
    assert reply.status == 200, reply.body
    return reply.json


def test_fault_injection_on_an_unknown_actor_is_404(api: Api) -> None:
    api.post("/api/v1/debug/actors/root/nobody/crash").error(404, "actor_not_found")


def test_rebuild_and_parked_replay(api: Api) -> None:
    api.open_thread(ticket())
    rebuilt = api.ok("POST", "/api/v1/forum/rebuild", {})["rebuild"]["projections"]
    assert [r["projection"] for r in rebuilt] == ["thread_views", "thread_stats", "queue_view", "control_state"]
    assert all(r["events_replayed"] >= 1 and r["last_sequence"] >= 1 for r in rebuilt)
    one = api.ok("POST", "/api/v1/forum/rebuild", {"projection": "thread_stats"})["rebuild"]["projections"]
    assert [r["projection"] for r in one] == ["thread_stats"]
    message = api.post("/api/v1/forum/rebuild", {"projection": "nope"}).error(400, "invalid_projection")
    assert "thread_views, thread_stats, queue_view, control_state" in message
    api.post("/api/v1/forum/parked/fmsg_missing/replay").error(404, "not_found")


def test_the_daemon_log_has_no_internal_error(server: ServeProcess) -> None:
    log = server.log()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def test_http_errors_are_counted_by_status(api: Api) -> None:
    _, before = parse_metrics(api.get("/metrics").text)
    api.get("/api/v1/does-not-exist")
    api.call("DELETE", "/api/v1/health")
    _, after = parse_metrics(api.get("/metrics").text)
    assert after['metawsm_http_errors_total{status="404"}'] == before.get('metawsm_http_errors_total{status="404"}',
                                                                          0) + 1
    assert after['metawsm_http_errors_total{status="405"}'] == before.get('metawsm_http_errors_total{status="405"}',
                                                                          0) + 1
