"""Input hygiene against a real ``metawsm serve`` (real Redis): docs/api.md, "Input rules".

Deep nesting is refused before it can exhaust the decoder's stack; control characters are
refused in ids, names and titles (400 naming the field) while bodies keep their newlines and
tabs; enum fields take only their listed values; and the OpenAPI document describes what a run
action really answers.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from support.agents import LONG_AGENT
from support.daemon import ServeProcess, serving
from support.http import auth_headers

THREADS = "/api/v1/forum/threads"
SIGNAL = "/api/v1/forum/control/signal"
CONTROL_CHARACTERS = ["\x00", "\n", "\t", "\r", "\x1b", "\x7f", "\x85"]


@pytest.fixture(scope="module")
def server(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serving(redis_server.url, tmp_path_factory.mktemp("input-hygiene")) as process:
        yield process
    log = process.log()
    assert "internal error" not in log and "Traceback" not in log, log[-5000:]


def call(server: ServeProcess, method: str, path: str, body: Any = None, raw: bytes | None = None
         ) -> tuple[int, Any]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **auth_headers(server.url)})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def refusal(answer: tuple[int, Any], status: int, code: str) -> str:
    assert answer[0] == status and answer[1]["error"]["code"] == code, answer
    return str(answer[1]["error"]["message"])


def ticket() -> str:
    return f"HYG-{uuid.uuid4().hex[:8]}"


def open_body(**fields: Any) -> dict[str, Any]:
    return {"ticket": ticket(), "title": "Which DB?", "body": "Postgres or SQLite?", **fields}


def signal_body(**payload: Any) -> dict[str, Any]:
    return {"run_id": "run-1", "ticket": ticket(), "agent_name": "agent",
            "payload": {"schema_version": 1, "control_type": "guidance_request", "question": "Which?", **payload}}


def nested(depth: int) -> str:
    """JSON text of ``depth`` objects and arrays nested in one another, written by hand: the json
    module itself gives up (RecursionError) long before a thousand levels."""
    opening = "".join('{"a": ' if level % 2 else "[" for level in range(depth))
    closing = "".join("}" if level % 2 else "]" for level in reversed(range(depth)))
    return opening + '"leaf"' + closing


def with_context(body: dict[str, Any], context_json: str) -> bytes:
    """``body`` as JSON with its payload's ``context`` replaced by the raw JSON ``context_json``."""
    body["payload"]["context"] = "@CONTEXT@"
    return json.dumps(body).replace('"@CONTEXT@"', context_json).encode()


# -- nesting ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [990, 40, 33])
def test_a_body_nested_deeper_than_the_limit_is_400(server: ServeProcess, depth: int) -> None:
    # The control payload of the report nested 990 deep; the body adds one level, the payload one.
    message = refusal(call(server, "POST", SIGNAL, raw=with_context(signal_body(), nested(depth - 2))), 400,
                      "invalid_json")
    assert message == "request body nests objects and arrays more than 32 deep"
    raw = b"[" * depth + b"]" * depth  # not even an object: still the depth that is refused first
    assert refusal(call(server, "POST", "/api/v1/runs", raw=raw), 400, "invalid_json") == message


def test_nesting_up_to_the_limit_reaches_the_rules(server: ServeProcess) -> None:
    raw = with_context(signal_body(), nested(30))  # 32 with the body and the payload
    assert json.loads(raw)  # well-formed
    message = refusal(call(server, "POST", SIGNAL, raw=raw), 400, "forum_control_signal_failed")
    assert message == "forum control context must be a string"
    brackets = signal_body(question="[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{")
    status, answer = call(server, "POST", SIGNAL, brackets)  # brackets inside strings do not nest
    assert status == 200 and answer["thread"]["thread_id"], answer


# -- control characters ----------------------------------------------------------------------------

# (path, a valid body, the field to spoil, how the refusal names it)
LINE_FIELDS = [
    (THREADS, open_body, "ticket", "ticket"),
    (THREADS, open_body, "title", "title"),
    (THREADS, open_body, "thread_id", "thread_id"),
    (THREADS, open_body, "run_id", "run_id"),
    (THREADS, open_body, "agent_name", "agent_name"),
    (THREADS, open_body, "actor_name", "actor_name"),
    (THREADS, open_body, "correlation_id", "correlation_id"),
    (THREADS, open_body, "causation_id", "causation_id"),
    (SIGNAL, signal_body, "run_id", "run_id"),
    (SIGNAL, signal_body, "ticket", "ticket"),
    (SIGNAL, signal_body, "agent_name", "agent_name"),
    ("/api/v1/forum/rebuild", dict, "projection", "projection"),
    ("/api/v1/runs", lambda: {"tickets": ["T-1"], "repos": ["app"], "dry_run": True}, "cwd", "cwd"),
    ("/api/v1/runs", lambda: {"tickets": ["T-1"], "repos": ["app"], "dry_run": True}, "base_branch", "base_branch"),
]


@pytest.mark.parametrize(("path", "make", "field", "named"), LINE_FIELDS, ids=[f"{p}:{f}" for p, _, f, _ in LINE_FIELDS])
def test_a_control_character_in_an_id_name_or_title_is_400_naming_the_field(
        server: ServeProcess, path: str, make: Any, field: str, named: str) -> None:
    for character in CONTROL_CHARACTERS:
        body = make()
        body[field] = f"bad{character}value"
        message = refusal(call(server, "POST", path, body), 400, "invalid_json")
        assert message == (f"invalid request body: {named} contains a control character; ids, names and titles "
                           "must be one line of printable text"), (repr(character), message)


def test_control_characters_in_list_items_nested_fields_and_thread_writes(server: ServeProcess) -> None:
    line = "ids, names and titles must be one line of printable text"
    run = {"tickets": ["T-1"], "repos": ["app"], "dry_run": True}
    for field, value, named in (("tickets", ["T-1", "T\x00"], "tickets[1]"), ("repos", ["a\npp"], "repos[0]"),
                                ("agents", ["agent\t"], "agents[0]")):
        message = refusal(call(server, "POST", "/api/v1/runs", {**run, field: value}), 400, "invalid_json")
        assert message == f"invalid request body: {named} contains a control character; {line}"
    brief = {"goal": "g\x00", "scope": "s", "done_criteria": "d", "constraints": "c", "merge_intent": "m"}
    message = refusal(call(server, "POST", "/api/v1/runs", {**run, "mode": "bootstrap", "brief": brief}),
                      400, "invalid_json")
    assert message.startswith("invalid request body: brief.goal contains a control character; text may hold")
    message = refusal(call(server, "POST", "/api/v1/runs/run-x/restart", {"agent": "a\x1b[31m"}), 400, "invalid_json")
    assert message == f"invalid request body: agent contains a control character; {line}"

    thread = call(server, "POST", THREADS, open_body())[1]["thread"]
    path = f"{THREADS}/{thread['thread_id']}"
    message = refusal(call(server, "POST", path + "/assign", {"assignee_type": "human", "assignee_name": "bob\x00"}),
                      400, "invalid_json")
    assert message == f"invalid request body: assignee_name contains a control character; {line}"
    message = refusal(call(server, "POST", path + "/seen", {"viewer_type": "human", "viewer_id": "me\n"}),
                      400, "invalid_json")
    assert message == f"invalid request body: viewer_id contains a control character; {line}"


@pytest.mark.parametrize("character", ["\x00", "\x0c", "\x1b", "\x7f", "\x9b"])
def test_bodies_refuse_control_characters_other_than_newlines_and_tab(server: ServeProcess, character: str) -> None:
    text = "text may hold newlines and tabs but no other control character"
    message = refusal(call(server, "POST", THREADS, open_body(body=f"a{character}b")), 400, "invalid_json")
    assert message == f"invalid request body: body contains a control character; {text}"
    thread = call(server, "POST", THREADS, open_body())[1]["thread"]
    for action, body in (("posts", {"body": f"x{character}"}), ("answer", {"body": f"x{character}"}),
                         ("assign", {"assignee_type": "human", "assignee_name": "bob",
                                     "assignment_note": f"x{character}"})):
        answer = call(server, "POST", f"{THREADS}/{thread['thread_id']}/{action}", body)
        assert refusal(answer, 400, "invalid_json").startswith("invalid request body: "), answer
    message = refusal(call(server, "POST", SIGNAL, signal_body(question=f"why{character}")), 400,
                      "forum_control_signal_failed")
    assert message == (f"forum control question contains a control character (U+{ord(character):04X}); "
                       "it may hold newlines and tabs only")
    message = refusal(call(server, "POST", SIGNAL, signal_body(agent_name="agent\t")), 400,
                      "forum_control_signal_failed")
    assert message == ("forum control agent_name contains a control character (U+0009); "
                       "it must be one line of printable text")


def test_newlines_and_tabs_in_bodies_are_kept(server: ServeProcess) -> None:
    body = "line one\n\tindented line two\r\nwindows line three\r\n"
    status, answer = call(server, "POST", THREADS, open_body(body=body))
    assert status == 200, answer
    thread_id = answer["thread"]["thread_id"]
    status, answer = call(server, "POST", f"{THREADS}/{thread_id}/posts", {"body": "a\tb\nc"})
    assert status == 200, answer
    note = {"assignee_type": "human", "assignee_name": "bob", "assignment_note": "first\nsecond"}
    assert call(server, "POST", f"{THREADS}/{thread_id}/assign", note)[0] == 200
    question = signal_body(question="Which one?\n\t1. Postgres\n\t2. SQLite")
    assert call(server, "POST", SIGNAL, question)[0] == 200
    detail = call(server, "GET", f"{THREADS}/{thread_id}")[1]
    assert [p["body"] for p in detail["posts"]] == [body.strip(), "a\tb\nc"]  # trimmed, as every text is


# -- enums -----------------------------------------------------------------------------------------


def test_enum_fields_take_only_their_listed_values(server: ServeProcess) -> None:
    message = refusal(call(server, "POST", THREADS, open_body(actor_type="")), 400, "forum_open_failed")
    assert message == 'invalid actor_type "": must be one of agent, operator, human, system'
    message = refusal(call(server, "POST", THREADS, open_body(priority="")), 400, "forum_open_failed")
    assert message == 'invalid priority "": must be one of low, normal, high, urgent'
    thread = call(server, "POST", THREADS, open_body())[1]["thread"]
    path = f"{THREADS}/{thread['thread_id']}"
    refusal(call(server, "POST", path + "/posts", {"body": "x", "actor_type": ""}), 400, "forum_add_post_failed")
    refusal(call(server, "POST", path + "/priority", {"priority": ""}), 400, "forum_priority_failed")
    refusal(call(server, "POST", path + "/assign", {"assignee_type": "", "assignee_name": "b"}), 400,
            "forum_assign_failed")
    refusal(call(server, "POST", SIGNAL, {**signal_body(), "actor_type": ""}), 400, "forum_control_signal_failed")
    # Left out, an enum field takes its default.
    assert call(server, "POST", THREADS, open_body())[1]["thread"]["priority"] == "normal"

    run = {"tickets": ["T-1"], "repos": ["app"], "dry_run": True}
    message = refusal(call(server, "POST", "/api/v1/runs", {**run, "workspace_strategy": "bogus"}), 400,
                      "invalid_run")
    assert message == 'invalid workspace_strategy "bogus": must be one of create, fork, reuse'
    message = refusal(call(server, "POST", "/api/v1/runs", {**run, "mode": ""}), 400, "run_failed")
    assert message == 'invalid mode "": must be run or bootstrap'


# -- the document ----------------------------------------------------------------------------------


def _document(server: ServeProcess) -> dict[str, Any]:
    status, document = call(server, "GET", "/api/v1/openapi.json")
    assert status == 200
    return document


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the document, its ``#/components/...`` references resolved."""
    return jsonschema.Draft202012Validator({**schema, "components": document["components"]})


def test_the_document_states_the_rules(server: ServeProcess) -> None:
    schemas = _document(server)["components"]["schemas"]
    opened = schemas["OpenThreadRequest"]["properties"]
    assert "" not in opened["actor_type"]["anyOf"][0]["enum"]
    for field, good, bad in (("title", "Which DB?", "Which\x00DB?"), ("body", "a\n\tb", "a\x00b"),
                             ("actor_name", "alice", "ali\nce")):
        pattern = re.compile(opened[field]["pattern"])
        assert pattern.search(good) and not pattern.search(bad), (field, opened[field])
    assert schemas["RunRequest"]["properties"]["workspace_strategy"]["enum"] == ["", "create", "fork", "reuse"]


def test_the_document_describes_what_each_run_action_answers(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    document = _document(env.serve)
    schema = document["paths"]["/api/v1/runs/{run_id}/{action}"]["post"]["responses"]["200"]["content"][
        "application/json"]["schema"]
    refs = {option["$ref"] for option in schema["anyOf"]}
    assert refs == {f"#/components/schemas/{name}" for name in (
        "RunViewResponse", "CleanupResponse", "CommitResponse", "MergeResponse", "IterateResponse", "PrResponse",
        "ReviewSyncResponse")}
    gone = document["paths"]["/api/v1/runs/{run_id}/{action}"]["post"]["responses"]["410"]
    assert gone["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    validator = _validator(document, schema)
    run_id = env.start_run()["run_id"]
    stopped = env.act(run_id, "stop")
    assert stopped.status == 200 and set(stopped.data) == {"run"}
    validator.validate(stopped.data)
    for options in ({"dry_run": True}, {}):
        cleaned = env.act(run_id, "cleanup", **options)
        assert cleaned.status == 200 and set(cleaned.data) == {"cleanup"}, cleaned
        validator.validate(cleaned.data)
        assert not _validator(document, {"$ref": "#/components/schemas/RunViewResponse"}).is_valid(cleaned.data)
    error = env.act(run_id, "resume")
    assert error.status == 410
    _validator(document, gone["content"]["application/json"]["schema"]).validate(error.data)
