"""Agents speak MCP: ``metawsm mcp`` (stdio) and the daemon's ``/mcp`` (streamable HTTP).

Against a real ``metawsm serve``, a real bootstrap run (tmux, git) and the MCP SDK's own
clients, over real stdio (the command of the run's generated ``.mcp.json``, with the agent
session's environment) and real HTTP (the agent's token):

* the run writes ``.mcp.json`` into the workspace repository, kept out of commits, without the
  agent's token, and tells the agent about the tools in its prompt; a profile with ``mcp: false``
  gets neither;
* the tools are listed with their schemas; ``ask`` returns at once and the run waits for
  guidance; the operator answers from the CLI and ``wait_for_answer`` returns the answer;
  ``post_progress`` and ``get_feedback``; ``complete`` and ``validate`` complete the run; every
  post is the agent's;
* a bad argument, or one the daemon refuses, is a tool error and the server keeps serving;
* ``/mcp`` without a token is 401, with the operator's 403.

Nothing here sleeps to synchronise: waits use :func:`metawsm.waiting.wait_until` or the tools'
own waiting.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from metawsm.runs.mcp_config import EXCLUDE_PATTERN, exclude, write_config
from support.agents import DONE, QUIET_AGENT, RunsEnv, git, hermetic_git, make_repo

TOOLS = {"ask", "wait_for_answer", "post_progress", "complete", "validate", "get_brief", "get_feedback"}
METAWSM = str(Path(sys.executable).parent / "metawsm")


@pytest.fixture(autouse=True)
def no_token_in_the_tests_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's CLI finds its token by discovery; the agent's is passed explicitly."""
    monkeypatch.delenv("METAWSM_TOKEN", raising=False)


# -- helpers ----------------------------------------------------------------------------------------


def session_env(env: RunsEnv, session: str) -> dict[str, str]:
    """The METAWSM_* variables of the agent's tmux session, as tmux holds them."""
    shown = env.tmux("show-environment", "-t", f"={session}")
    assert shown.returncode == 0, shown.stderr
    pairs = (line.partition("=") for line in shown.stdout.splitlines() if line.startswith("METAWSM_"))
    return {name: value for name, _, value in pairs}


def bootstrap(env: RunsEnv) -> tuple[dict[str, Any], dict[str, Any]]:
    """A bootstrap run of one agent: (the run, its agent)."""
    run = env.start_run(mode="bootstrap")
    env.wait_status(run["run_id"], "running")
    return run, run["agents"][0]


def result(call: Any) -> dict[str, Any]:
    assert not call.is_error, call.content
    return json.loads(call.content[0].text)


def error_text(call: Any) -> str:
    assert call.is_error, call.content
    return str(call.content[0].text)


@asynccontextmanager
async def over_stdio(command: str, args: list[str], env: dict[str, str]) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=command, args=args, env=env)
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def over_http(url: str, token: str) -> AsyncIterator[ClientSession]:
    async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http, \
            streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def raw_post(url: str, headers: dict[str, str]) -> tuple[int, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# -- the run writes the configuration -------------------------------------------------------------------


def test_a_run_gives_its_agent_an_mcp_config_kept_out_of_commits_and_without_its_token(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT)
    run, agent = bootstrap(env)
    repo_dir = Path(agent["workspace_path"])
    config = json.loads((repo_dir / ".mcp.json").read_text())
    server = config["mcpServers"]["metawsm"]
    assert server["command"] == str(env.bin_dir / "metawsm") and server["args"] == ["mcp"]
    tokens = session_env(env, agent["session"])
    assert tokens["METAWSM_TOKEN"].startswith("mwa_")
    assert server["env"] == {name: tokens[name] for name in
                             ("METAWSM_SERVER", "METAWSM_RUN_ID", "METAWSM_TICKET", "METAWSM_WORKSPACE",
                              "METAWSM_RUN_FILE")}
    assert tokens["METAWSM_TOKEN"] not in (repo_dir / ".mcp.json").read_text()
    # Excluded through the repository's common git dir: the worktree stays clean, close is not blocked.
    assert git(repo_dir, "status", "--porcelain") == ""
    assert EXCLUDE_PATTERN in (env.repo / ".git" / "info" / "exclude").read_text().splitlines()
    prompt = (repo_dir.parent / ".metawsm" / "prompt-agent.md").read_text()
    assert "wait_for_answer" in prompt and ".mcp.json" in prompt


def test_a_profile_with_mcp_off_gets_no_config_and_no_word_of_it(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT, policy={"agent_profiles": [
        {"name": "script", "runner": "shell", "mcp": False, "runner_options": {"command": ["sleep", "600"]}}]})
    _, agent = bootstrap(env)
    repo_dir = Path(agent["workspace_path"])
    assert not (repo_dir / ".mcp.json").exists()
    assert "wait_for_answer" not in (repo_dir.parent / ".metawsm" / "prompt-agent.md").read_text()


def test_a_linked_worktree_is_excluded_through_the_common_git_dir_and_a_tracked_config_is_left_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_git(tmp_path, monkeypatch)
    repo = make_repo(tmp_path / "repo")
    worktree = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "task/x", str(worktree))
    written = write_config(worktree, {"mcpServers": {}})
    assert written == worktree / ".mcp.json" and git(worktree, "status", "--porcelain") == ""
    assert exclude(worktree) == (repo / ".git" / "info" / "exclude").resolve()
    assert (repo / ".git" / "info" / "exclude").read_text().count(EXCLUDE_PATTERN) == 1  # once, however often
    (repo / ".mcp.json").write_text('{"mcpServers": {"theirs": {}}}\n')
    git(repo, "add", "-f", ".mcp.json")  # -f: the exclude now covers the main checkout too
    git(repo, "commit", "-q", "-m", "their own MCP config")
    assert write_config(repo, {"mcpServers": {}}) is None
    assert "theirs" in (repo / ".mcp.json").read_text()


# -- the tools, end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_an_agent_asks_waits_reports_and_completes_through_mcp(runs_env, transport: str) -> None:
    env = runs_env(agent=QUIET_AGENT)
    run, agent = bootstrap(env)
    run_id, session = run["run_id"], agent["session"]
    agent_vars = session_env(env, session)
    if transport == "stdio":
        # Exactly what the agent's client starts from .mcp.json, with the session's environment
        # (which carries the agent's name and token) passed on.
        server = json.loads((Path(agent["workspace_path"]) / ".mcp.json").read_text())["mcpServers"]["metawsm"]
        connect = over_stdio(server["command"], server["args"], {**server["env"], **{
            name: agent_vars[name] for name in ("METAWSM_AGENT", "METAWSM_TOKEN")}})
    else:
        connect = over_http(env.url + "/mcp", agent_vars["METAWSM_TOKEN"])

    async with connect as mcp:
        listed = await mcp.list_tools()
        assert {tool.name for tool in listed.tools} == TOOLS
        ask_tool = next(tool for tool in listed.tools if tool.name == "ask")
        assert ask_tool.input_schema["required"] == ["question"] and ask_tool.description

        brief = result(await mcp.call_tool("get_brief", {}))
        assert brief["brief"]["done_criteria"] == DONE and brief["working_directory"] == agent["workspace_path"]
        resource = await mcp.read_resource("metawsm://brief")
        assert json.loads(resource.contents[0].text)["run_id"] == run_id

        # A bad argument is a tool error, and the server goes on serving.
        assert "question" in error_text(await mcp.call_tool("ask", {"question": 5}))
        assert "timeout_seconds" in error_text(await mcp.call_tool("wait_for_answer", {"timeout_seconds": 500}))
        assert "no question" in error_text(await mcp.call_tool("wait_for_answer", {}))

        progress = result(await mcp.call_tool("post_progress", {"note": "schema drafted"}))
        assert progress["posted"] is True

        asked = result(await mcp.call_tool("ask", {
            "question": "Which database should I use?", "context": "both work", "options": ["Postgres", "SQLite"],
            "urgency": "high"}))
        assert asked["status"] == "pending" and asked["thread_id"]
        snap = env.wait_status(run_id, "awaiting_guidance")
        [pending] = snap["pending_guidance"]
        assert pending["question"] == "Which database should I use?"
        assert "- SQLite" in pending["context"] and "Urgency: high" in pending["context"]
        pending_now = result(await mcp.call_tool("wait_for_answer", {"timeout_seconds": 0}))
        assert pending_now["status"] == "pending" and pending_now["thread_id"] == asked["thread_id"]

        # The wait is on the stream while the operator answers with the documented CLI command.
        waiting = asyncio.create_task(mcp.call_tool("wait_for_answer", {"thread_id": asked["thread_id"],
                                                                        "timeout_seconds": 40}))
        answered = await asyncio.to_thread(
            env.cli, "forum", "signal", "--run-id", run_id, "--ticket", "T-1", "--agent-name", "agent",
            "--type", "guidance_answer", "--answer", "Use SQLite")
        assert answered.returncode == 0, answered.stderr
        answer = result(await waiting)
        assert answer == {"status": "answered", "answer": "Use SQLite", "answered_by": "operator",
                          "thread_id": asked["thread_id"]}
        env.wait_status(run_id, "running")
        # Asked again after the answer, it answers at once (and without thread_id: the latest question).
        assert result(await mcp.call_tool("wait_for_answer", {}))["answer"] == "Use SQLite"

        # Feedback: the operator's posts on the agent's control thread, each once.
        posted = await asyncio.to_thread(env.cli, "forum", "post", "--thread-id", asked["thread_id"],
                                         "--body", "Keep the migration reversible")
        assert posted.returncode == 0, posted.stderr
        opened = env.api("POST", "/api/v1/forum/threads", {  # for every agent of the run, as iterate posts
            "ticket": "T-1", "run_id": run_id, "title": "Heads-up", "body": "CI is slow today",
            "actor_type": "operator"})
        assert opened.status == 200, opened
        feedback = result(await mcp.call_tool("get_feedback", {}))["feedback"]
        assert [(f["kind"], f["text"]) for f in feedback] == [
            ("answer", "Use SQLite"), ("post", "Keep the migration reversible"), ("thread", "Heads-up\n\nCI is slow today")]
        assert result(await mcp.call_tool("get_feedback", {}))["feedback"] == []

        assert result(await mcp.call_tool("complete", {"summary": "SQLite schema"}))["signalled"] == "completion"
        refused = error_text(await mcp.call_tool("validate", {"status": "maybe", "done_criteria": DONE}))
        assert "validation status must be passed|failed" in refused
        assert result(await mcp.call_tool("validate", {"status": "passed", "done_criteria": DONE}))["status"] == "passed"
        env.wait_status(run_id, "completed")

    # Everything the tools wrote is the agent's; only the operator's answer and post are not.
    events = env.api("GET", f"/api/v1/forum/events?run_id={run_id}&limit=1000").data["events"]
    others = [(e["envelope"]["actor_type"], e["payload_json"].get("control_type") or e["payload_json"]["type"])
              for e in events if e["envelope"].get("actor_name") != "agent"]
    assert others == [("operator", "guidance_answer"), ("human", "forum.post.added"),
                      ("operator", "forum.thread.opened")], others
    assert all(e["envelope"]["actor_type"] == "agent" for e in events if e["envelope"].get("actor_name") == "agent")
    by_agent = [e["payload_json"].get("control_type") or e["payload_json"]["type"] for e in events
                if e["envelope"]["actor_type"] == "agent"]
    assert by_agent == ["forum.thread.opened", "guidance_request", "completion", "validation"]


async def test_without_its_identity_the_server_answers_tool_errors_and_keeps_serving() -> None:
    async with over_stdio(METAWSM, ["mcp"], {"METAWSM_SERVER": "http://127.0.0.1:9"}) as mcp:
        assert {tool.name for tool in (await mcp.list_tools()).tools} == TOOLS
        first = error_text(await mcp.call_tool("ask", {"question": "anyone?"}))
        assert "METAWSM_RUN_ID, METAWSM_TICKET, METAWSM_AGENT are not set" in first
        assert error_text(await mcp.call_tool("get_brief", {})) == first
    agent = {"METAWSM_SERVER": "http://127.0.0.1:9", "METAWSM_RUN_ID": "run_x", "METAWSM_TICKET": "T-1",
             "METAWSM_AGENT": "agent", "METAWSM_TOKEN": "mwa_x"}
    async with over_stdio(METAWSM, ["mcp"], agent) as mcp:  # nobody listens on port 9
        assert "cannot reach metawsm serve at http://127.0.0.1:9" in error_text(
            await mcp.call_tool("ask", {"question": "anyone?"}))
        assert "cannot reach" in error_text(await mcp.call_tool("get_feedback", {}))


async def test_the_http_endpoint_needs_an_agent_token(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT)
    status, body = await asyncio.to_thread(raw_post, env.url + "/mcp", {})
    assert status == 401 and body["error"]["code"] == "unauthorized"
    operator = env.api("GET", "/api/v1/auth").data  # where the operator token is
    token = Path(operator["token_file"]).read_text().strip()
    status, body = await asyncio.to_thread(raw_post, env.url + "/mcp", {"Authorization": f"Bearer {token}"})
    assert status == 403 and body["error"]["code"] == "forbidden"
    openapi = env.api("GET", "/api/v1/openapi.json").data
    assert "/mcp" not in openapi["paths"]


def test_metawsm_mcp_is_a_documented_command() -> None:
    shown = subprocess.run([METAWSM, "mcp", "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "MCP tools over stdio" in shown.stdout
