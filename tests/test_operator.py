"""The operator actor, first slice (docs/operator.md): ``escalate_guidance`` with a real daemon and tmux.

A guidance request left unanswered for ``forum.sla.escalation_minutes`` (0.05 min = 3 s here) raises
the control thread to ``urgent``, adds a system post and records one decision; not before the
deadline, never twice for the same request, not even after a daemon restart.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing
from typing import Any

import pytest

from metawsm.waiting import wait_until
from support.agents import LONG_AGENT, find_node

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


def test_an_unanswered_guidance_request_is_escalated_once_after_the_sla(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy={"forum": {"sla": {"escalation_minutes": SLA_MINUTES}}})
    run = env.start_run(ticket="T-17")
    run_id = run["run_id"]
    body = {"run_id": run_id, "ticket": "T-17", "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_request", "question": "Which database?"}}
    asked = env.api("POST", "/api/v1/forum/control/signal", body)
    assert asked.status in (200, 202), asked
    thread_id = asked.data["thread"]["thread_id"]
    env.wait_status(run_id, "awaiting_guidance")

    # Before the deadline: nothing decided, the thread keeps its priority.
    before = _thread(env, thread_id)
    assert before["thread"]["priority"] != "urgent"
    assert _operator_posts(before) == []
    assert _decisions(env, run_id) == []

    # After it: urgent, one system post saying why, one decision.
    wait_until(lambda: _thread(env, thread_id)["thread"]["priority"] == "urgent", timeout=20,
               message="the control thread to be escalated to urgent")
    wait_until(lambda: _operator_posts(_thread(env, thread_id)), timeout=10, message="the operator's post")
    posts = _operator_posts(_thread(env, thread_id))
    assert len(posts) == 1 and "unanswered" in posts[0]["body"] and "urgent" in posts[0]["body"]
    assert posts[0]["author_type"] == "system"
    decisions = _decisions(env, run_id)
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision["intent"] == "escalate_guidance" and decision["source"] == "rule" and decision["executed"]
    assert decision["run_id"] == run_id and decision["thread_id"] == thread_id and decision["cause"]
    assert "escalation_minutes" in decision["reason"]
    with closing(sqlite3.connect(env.serve.db_path)) as conn:
        (event_id,) = conn.execute("SELECT pending_event_id FROM forum_control_state WHERE run_id = ?",
                                   (run_id,)).fetchone()
    assert decision["cause"] == event_id

    # The CLI reports it, with the command that answers the question.
    shown = env.cli("operator", "--all", "--once", "--json")
    assert shown.returncode == 0, shown.stderr
    listed = json.loads(shown.stdout)["decisions"]
    assert [d["id"] for d in listed] == [decision["id"]]
    assert "--type guidance_answer" in listed[0]["command"] and run_id in listed[0]["command"]
    text = env.cli("operator", "--run-id", run_id, "--once")
    assert text.returncode == 0 and "escalate_guidance" in text.stdout and "guidance_answer" in text.stdout
    follow = env.cli("operator", "--all")
    assert follow.returncode == 2 and "--once" in follow.stderr

    # A restart does not repeat it: the decision is durable and keyed by the pending request.
    env.serve.restart()
    env.wait_status(run_id, "awaiting_guidance")
    # Several operator ticks after the restart (each at most 0.3 s here), seen in its own counter.
    wait_until(lambda: _operator_ticks(env) >= 10, timeout=20, message="the restarted operator to tick")
    assert len(_decisions(env, run_id)) == 1
    assert len(_operator_posts(_thread(env, thread_id))) == 1


def test_no_decisions_and_the_route_needs_a_token(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT)
    assert _decisions(env) == []
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(env.url + "/api/v1/operator/decisions", timeout=10)
    assert refused.value.code == 401
    shown = env.cli("operator", "--once")
    assert shown.returncode == 0 and "no operator decisions" in shown.stdout
