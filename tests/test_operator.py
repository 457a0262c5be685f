"""The operator actor (docs/operator.md) with a real daemon and tmux.

A guidance request is ``guidance_needed`` at once; left unanswered for
``forum.sla.escalation_minutes`` (0.05 min = 3 s here) it raises the control thread to ``urgent``,
adds a system post, runs the notify command and records one decision; not before the deadline,
never twice for the same request, not even after a daemon restart.  A killed agent is restarted
once per death and escalated when its budget is spent; a quiet run is stopped; the LLM command
is consulted in ``assist`` and cannot execute anything in ``auto``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from metawsm.waiting import wait_until
from support.agents import LONG_AGENT, QUIET_AGENT, fast_policy, find_node
from support.http import auth_headers

SLA_MINUTES = 0.05  # 3 s


def _thread(env: Any, thread_id: str) -> dict[str, Any]:
    result = env.api("GET", f"/api/v1/forum/threads/{thread_id}")
    assert result.status == 200, result
    data: dict[str, Any] = result.data
    return data


def _decisions(env: Any, run_id: str = "") -> list[dict[str, Any]]:
    result = env.api("GET", "/api/v1/operator/decisions" + (f"?run_id={run_id}" if run_id else ""))
    assert result.status == 200, result
    decisions: list[dict[str, Any]] = result.data["decisions"]
    return decisions


def _operator_ticks(env: Any) -> int:
    node = find_node(env.actors(), "Operator")
    return int(node["processed"]) if node else 0


def _operator_posts(thread: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in thread["posts"] if p.get("author_name") == "operator"]


NOTIFY_SCRIPT = """
import json, os, sys
keys = ("METAWSM_EVENT", "METAWSM_MESSAGE", "METAWSM_RUN_ID", "METAWSM_RUN_STATUS", "METAWSM_TICKETS")
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({k: os.environ.get(k) for k in keys}) + "\\n")
"""


def _notify_policy(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY_SCRIPT)
    calls = tmp_path / "notified.jsonl"
    return {"operator": {"notify_command": [sys.executable, str(script), str(calls)]}}, calls


def _notified(calls: Path) -> list[dict[str, Any]]:
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines() if line.strip()]


def _ask(env: Any, run_id: str, ticket: str, question: str = "Which database?") -> str:
    body = {"run_id": run_id, "ticket": ticket, "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_request", "question": question}}
    asked = env.api("POST", "/api/v1/forum/control/signal", body)
    assert asked.status in (200, 202), asked
    thread_id: str = asked.data["thread"]["thread_id"]
    return thread_id


def _intents(env: Any, run_id: str) -> list[str]:
    return [d["intent"] for d in _decisions(env, run_id)]


def test_an_unanswered_guidance_request_is_escalated_once_after_the_sla(runs_env, tmp_path: Path) -> None:
    notify, calls = _notify_policy(tmp_path)
    env = runs_env(agent=LONG_AGENT, policy={"forum": {"sla": {"escalation_minutes": SLA_MINUTES}}, **notify})
    run = env.start_run(ticket="T-17")
    run_id = run["run_id"]
    body = {"run_id": run_id, "ticket": "T-17", "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_request", "question": "Which database?"}}
    asked = env.api("POST", "/api/v1/forum/control/signal", body)
    assert asked.status in (200, 202), asked
    thread_id = asked.data["thread"]["thread_id"]
    env.wait_status(run_id, "awaiting_guidance")

    # Before the deadline: only guidance_needed (a notification), the thread keeps its priority.
    wait_until(lambda: _intents(env, run_id) == ["guidance_needed"], timeout=10, message="guidance_needed")
    before = _thread(env, thread_id)
    assert before["thread"]["priority"] != "urgent"
    assert _operator_posts(before) == []
    needed = _decisions(env, run_id)[0]
    assert "Which database?" in needed["reason"] and not needed["executed"] and needed["tickets"] == ["T-17"]

    # After it: urgent, one system post saying why, one decision.
    wait_until(lambda: _thread(env, thread_id)["thread"]["priority"] == "urgent", timeout=20,
               message="the control thread to be escalated to urgent")
    wait_until(lambda: _operator_posts(_thread(env, thread_id)), timeout=10, message="the operator's post")
    posts = _operator_posts(_thread(env, thread_id))
    assert len(posts) == 1 and "unanswered" in posts[0]["body"] and "urgent" in posts[0]["body"]
    assert posts[0]["author_type"] == "system"
    wait_until(lambda: len(_decisions(env, run_id)) == 2 and _decisions(env, run_id)[1]["executed"], timeout=10,
               message="the escalation to be recorded as executed")
    decisions = _decisions(env, run_id)
    decision = decisions[1]
    assert decision["intent"] == "escalate_guidance" and decision["source"] == "rule" and decision["executed"]
    assert decision["run_id"] == run_id and decision["thread_id"] == thread_id and decision["cause"]
    assert "escalation_minutes" in decision["reason"]
    with closing(sqlite3.connect(env.serve.db_path)) as conn:
        (event_id,) = conn.execute("SELECT pending_event_id FROM forum_control_state WHERE run_id = ?",
                                   (run_id,)).fetchone()
    assert decision["cause"] == event_id == needed["cause"]

    # The notify command ran once per decision, without a shell, with the decision in its environment.
    wait_until(lambda: len(_notified(calls)) == 2, timeout=10, message="two notifications")
    escalated = [c for c in _notified(calls) if c["METAWSM_EVENT"] == "escalate_guidance"]
    assert len(escalated) == 1
    assert escalated[0]["METAWSM_RUN_ID"] == run_id and escalated[0]["METAWSM_TICKETS"] == "T-17"
    assert escalated[0]["METAWSM_RUN_STATUS"] == "awaiting_guidance"
    assert "unanswered" in escalated[0]["METAWSM_MESSAGE"]

    # The CLI reports it, with the command that answers the question.
    shown = env.cli("operator", "--all", "--once", "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["decisions"]
    assert [d["id"] for d in listed] == [needed["id"], decision["id"]]
    assert "--type guidance_answer" in listed[1]["command"] and run_id in listed[1]["command"]
    text = env.cli("operator", "--run-id", run_id, "--once")
    assert text.returncode == 0 and "escalate_guidance" in text.stdout and "guidance_answer" in text.stdout

    # A restart does not repeat it: the decision is durable and keyed by the pending request.
    env.serve.restart()
    env.wait_status(run_id, "awaiting_guidance")
    # The restarted operator checks its rules when it starts, before it is running.
    wait_until(lambda: (find_node(env.actors(), "Operator") or {}).get("state") == "running", timeout=20,
               message="the restarted operator to run")
    assert _intents(env, run_id) == ["guidance_needed", "escalate_guidance"]
    assert len(_operator_posts(_thread(env, thread_id))) == 1
    assert len(_notified(calls)) == 2


def test_no_decisions_and_the_route_needs_a_token(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    assert _decisions(env) == []
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(env.url + "/api/v1/operator/decisions", timeout=10)
    assert refused.value.code == 401
    shown = env.cli("operator", "--once")
    assert shown.returncode == 0 and "no operator decisions" in shown.stdout


def test_a_killed_agent_is_restarted_once_then_escalated_when_the_budget_is_spent(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy=fast_policy(restart_budget=1))
    run = env.start_run(ticket="T-5")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    env.wait_agent(run_id, lambda a: a.get("pane_pid"), "pane pid known")

    assert env.tmux("kill-session", "-t", f"={session}").returncode == 0
    env.wait_agent(run_id, lambda a: a.get("restarts_used", 0) == 1 and a["status"] == "running", "restarted")
    wait_until(lambda: _intents(env, run_id) == ["auto_restart"], timeout=10, message="the auto_restart decision")
    [restart] = _decisions(env, run_id)
    assert restart["executed"] and restart["agent_name"] == "agent" and restart["workspace"]
    assert "dead" in restart["reason"] and "only this agent" in restart["reason"]

    # The budget (1) is spent: the second death is escalated, not restarted.
    env.wait_agent(run_id, lambda a: a.get("pane_pid"), "pane pid known again")
    assert env.tmux("kill-session", "-t", f"={session}").returncode == 0
    wait_until(lambda: "escalate_blocked" in _intents(env, run_id), timeout=15, message="escalate_blocked")
    assert _intents(env, run_id).count("auto_restart") == 1
    blocked = [d for d in _decisions(env, run_id) if d["intent"] == "escalate_blocked"][0]
    assert "restart budget exhausted" in blocked["reason"] and blocked["agent_name"] == "agent"
    assert env.agent(run_id)["status"] == "failed"


def test_a_quiet_run_is_stopped_as_stale(runs_env) -> None:
    env = runs_env(agent=QUIET_AGENT, policy={"operator": {"stale_run_age_seconds": 2}})
    run = env.start_run(ticket="T-6")
    run_id = run["run_id"]
    env.wait_status(run_id, "stopped", timeout=30)
    [stale] = _decisions(env, run_id)
    assert stale["intent"] == "auto_stop_stale" and stale["executed"] and "no activity" in stale["reason"]
    assert env.sessions() == []


def test_a_busy_run_is_not_stale(runs_env) -> None:
    # Longer than the 5 s at which an agent actor refreshes its stored activity time.
    env = runs_env(agent=LONG_AGENT, policy={"operator": {"stale_run_age_seconds": 6}})
    run = env.start_run(ticket="T-7")
    run_id = run["run_id"]
    # The agent prints twice a second: after two stale deadlines the run still runs, nothing decided.
    node_before = _operator_ticks(env)
    wait_until(lambda: _operator_ticks(env) >= node_before + 2, timeout=40, message="two operator deadlines")
    assert env.snapshot(run_id)["status"] == "running"
    assert "auto_stop_stale" not in _intents(env, run_id)


LLM_SCRIPT = """
import json, sys
context = json.load(sys.stdin)
with open(sys.argv[1], "a") as out:
    out.write(json.dumps(context) + "\\n")
print("thinking... " + json.dumps({"intent": "auto_stop_stale", "reason": "looks idle to me",
                                   "confidence": 0.9, "needs_human": False}))
"""


@pytest.mark.parametrize("mode", ["assist", "auto"])
def test_the_llm_is_consulted_and_cannot_execute(runs_env, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "llm.py"
    script.write_text(LLM_SCRIPT)
    seen = tmp_path / "llm-context.jsonl"
    env = runs_env(agent=LONG_AGENT, policy={"operator": {"llm": {"mode": mode, "timeout_seconds": 20,
                                                                   "command": [sys.executable, str(script),
                                                                               str(seen)]}}})
    run = env.start_run(ticket="T-8")
    run_id = run["run_id"]
    _ask(env, run_id, "T-8", "Ship it?")
    env.wait_status(run_id, "awaiting_guidance")
    wait_until(lambda: _decisions(env, run_id) and _decisions(env, run_id)[0].get("llm"), timeout=20,
               message="the LLM's suggestion recorded beside the rule's decision")
    [decision] = _decisions(env, run_id)
    assert decision["intent"] == "guidance_needed" and decision["source"] == "rule"
    assert decision["llm"]["intent"] == "auto_stop_stale" and decision["llm"]["reason"] == "looks idle to me"
    context = json.loads(seen.read_text().splitlines()[0])
    assert context["run_id"] == run_id and context["rule_intent"] == "guidance_needed"
    assert context["pending_guidance"][0]["question"] == "Ship it?"
    # Neither mode lets the LLM stop the run: it stays waiting for its answer.
    assert env.snapshot(run_id)["status"] == "awaiting_guidance"
    assert _intents(env, run_id) == ["guidance_needed"]


def test_decisions_reach_live_stream_clients_whose_filter_matches(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run(ticket="T-9")
    run_id = run["run_id"]

    async def frames_after_asking() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            headers = auth_headers(env.url)
            mine = await session.ws_connect(env.url + "/api/v1/forum/stream", params={"run_id": run_id},
                                            headers=headers)
            other = await session.ws_connect(env.url + "/api/v1/forum/stream", params={"ticket": "T-OTHER"},
                                             headers=headers)
            for ws in (mine, other):  # live once the catch-up's heartbeat came
                while json.loads((await ws.receive(timeout=10)).data)["type"] != "heartbeat":
                    pass
            await asyncio.get_running_loop().run_in_executor(None, _ask, env, run_id, "T-9")
            decision_frame: dict[str, Any] = {}
            while not decision_frame:
                frame = json.loads((await mine.receive(timeout=10)).data)
                if frame["type"] == "operator.decision":
                    decision_frame = frame
            seen_by_other = []
            while True:  # drain what the other client got meanwhile
                try:
                    seen_by_other.append(json.loads((await other.receive(timeout=0.5)).data))
                except TimeoutError:
                    break
            await mine.close()
            await other.close()
            return decision_frame, seen_by_other

    frame, other_frames = asyncio.run(frames_after_asking())
    decision = frame["decision"]
    assert decision["intent"] == "guidance_needed" and decision["run_id"] == run_id and decision["id"] > 0
    assert decision["tickets"] == ["T-9"]
    assert all(f["type"] != "operator.decision" for f in other_frames)
