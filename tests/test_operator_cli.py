"""``GET /api/v1/operator/decisions`` as a long-poll, and ``metawsm operator`` following it (real daemon, tmux).

The operator makes the decisions itself: an agent's guidance request left unanswered for
``forum.sla.escalation_minutes`` (0.05 min = 3 s here) becomes an ``escalate_guidance`` decision.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from metawsm.waiting import wait_until
from support.agents import LONG_AGENT
from support.background import BackgroundCli
from support.http import auth_headers

SLA = {"forum": {"sla": {"escalation_minutes": 0.05}}}
TICKET = "T-17"


Cli = BackgroundCli


def ask(env: Any, run_id: str, question: str) -> str:
    body = {"run_id": run_id, "ticket": TICKET, "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_request", "question": question}}
    asked = env.api("POST", "/api/v1/forum/control/signal", body)
    assert asked.status in (200, 202), asked
    thread_id: str = asked.data["thread"]["thread_id"]
    return thread_id


def answer(env: Any, run_id: str, text: str) -> None:
    body = {"run_id": run_id, "ticket": TICKET, "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_answer", "answer": text}}
    answered = env.api("POST", "/api/v1/forum/control/signal", body)
    assert answered.status in (200, 202), answered


def decisions(env: Any, query: str = "") -> dict[str, Any]:
    result = env.api("GET", "/api/v1/operator/decisions" + query)
    assert result.status == 200, result
    data: dict[str, Any] = result.data
    return data


def escalations(lines: list[str]) -> list[str]:
    return [line for line in lines if "  escalate_guidance  " in line]


def test_the_long_poll_waits_for_the_next_decision_and_refuses_bad_parameters(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy=SLA)
    run_id = env.start_run(ticket=TICKET)["run_id"]

    # Nothing yet: at once without wait; an empty page (next_after = after) once a short wait ends.
    assert decisions(env, f"?run_id={run_id}") == {"decisions": [], "next_after": 0}
    started = time.monotonic()
    assert decisions(env, f"?run_id={run_id}&after=0&wait=0.5") == {"decisions": [], "next_after": 0}
    assert time.monotonic() - started >= 0.45

    # A long-poll open before the question is asked answers with the operator's decision.
    polled: dict[str, Any] = {}

    def poll() -> None:
        polled.update(decisions(env, f"?run_id={run_id}&after=0&wait=30"))
        polled["elapsed"] = time.monotonic() - asked_at

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    asked_at = time.monotonic()
    ask(env, run_id, "Which database?")
    poller.join(40)
    assert not poller.is_alive()
    assert polled["decisions"], polled
    assert polled["elapsed"] < 25, polled  # woken by the decision, not by the end of the wait
    assert polled["next_after"] == max(d["id"] for d in polled["decisions"])
    assert all(d["run_id"] == run_id for d in polled["decisions"])

    # The escalation comes after the SLA; a long-poll after what was seen returns only newer ones.
    wait_until(lambda: any(d["intent"] == "escalate_guidance" for d in decisions(env, f"?run_id={run_id}")["decisions"]),
               timeout=30, message="the escalation")
    everything = decisions(env, f"?run_id={run_id}")
    newest = everything["next_after"]
    first = everything["decisions"][0]["id"]
    later = decisions(env, f"?run_id={run_id}&after={first}")
    assert [d["id"] for d in later["decisions"]] == [d["id"] for d in everything["decisions"][1:]]
    assert decisions(env, f"?after={newest}&wait=0.2") == {"decisions": [], "next_after": newest}

    # The ticket filter: the run's ticket matches, another does not.
    ids = [d["id"] for d in everything["decisions"]]
    assert [d["id"] for d in decisions(env, f"?ticket={TICKET}")["decisions"]] == ids
    assert decisions(env, "?ticket=OTHER-1") == {"decisions": [], "next_after": 0}

    # Bad parameters: 400 with the API's error shape.
    for query in ("?wait=31", "?wait=-1", "?wait=soon", "?after=-1", "?after=x"):
        refused = env.api("GET", "/api/v1/operator/decisions" + query)
        assert refused.status == 400, (query, refused)
        assert refused.data["error"]["code"] == "invalid_filter", refused
        assert "invalid query parameter" in refused.data["error"]["message"]

    # A daemon that stops answers a waiting long-poll at once with 503 (it does not hold up the stop).
    cut: dict[str, Any] = {}
    sent = threading.Event()

    def wait_for_nothing() -> None:
        parts = urlsplit(env.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=40)
        conn.request("GET", f"/api/v1/operator/decisions?after={newest}&wait=30", headers=auth_headers(env.url))
        sent.set()  # the request is in the daemon's socket before it is told to stop
        response = conn.getresponse()
        cut.update(status=response.status, data=json.loads(response.read()))
        conn.close()

    waiting = threading.Thread(target=wait_for_nothing, daemon=True)
    waiting.start()
    assert sent.wait(10)
    env.serve.stop()
    waiting.join(20)
    assert cut.get("status") == 503 and cut["data"]["error"]["code"] == "unavailable", cut


def test_operator_follows_decisions_live_across_a_daemon_restart(runs_env, tmp_path: Path) -> None:
    env = runs_env(agent=LONG_AGENT, policy=SLA)
    run_id = env.start_run(ticket=TICKET)["run_id"]

    mixed = env.cli("operator", "--all", "--run-id", run_id)
    assert mixed.returncode == 2
    assert mixed.stderr.strip() == "error: --all cannot be combined with --run-id or --ticket"

    text = Cli(env, "operator", "--all")
    as_json = Cli(env, "operator", "--run-id", run_id, "--json")
    late: Cli | None = None
    try:
        for follower in (text, as_json):
            follower.wait_for(lambda f=follower: any("Following operator decisions" in line for line in f.err),
                              "the follower to start")
        ask(env, run_id, "Which database?")
        text.wait_for(lambda: escalations(text.out), "the escalation line")
        line = escalations(text.out)[0]
        assert run_id in line and "escalation_minutes" in line
        command = text.out[text.out.index(line) + 1]
        assert command.startswith("  metawsm forum signal ") and "--type guidance_answer" in command
        assert f"--run-id {run_id}" in command
        as_json.wait_for(lambda: [d for d in map(json.loads, as_json.out) if d["intent"] == "escalate_guidance"],
                         "the escalation as JSON")
        first = next(d for d in map(json.loads, as_json.out) if d["intent"] == "escalate_guidance")
        assert first["run_id"] == run_id and "--type guidance_answer" in first["command"]

        # A follower started now prints nothing old; both go on after the daemon restarts.
        late = Cli(env, "operator", "--all")
        late.wait_for(lambda: any("Following" in line for line in late.err), "the late follower to start")
        env.serve.restart()
        text.wait_for(lambda: "reconnecting…" in text.err, "the reconnecting line")
        env.wait_status(run_id, "awaiting_guidance")
        answer(env, run_id, "SQLite")
        wait_until(lambda: not env.snapshot(run_id)["pending_guidance"], timeout=20, message="the answer to land")
        ask(env, run_id, "Which port?")
        text.wait_for(lambda: len(escalations(text.out)) == 2, "the second escalation", timeout=40)
        late.wait_for(lambda: escalations(late.out), "the second escalation in the late follower")
        assert escalations(late.out) == escalations(text.out)[1:]
        assert text.err.count("reconnecting…") == 1

        for follower, sig in ((text, signal.SIGTERM), (as_json, signal.SIGTERM), (late, signal.SIGINT)):
            assert follower.stop(sig) == 0, follower.err
            assert follower.err[-1] == "Operator stopped."
    finally:
        for follower in (text, as_json, *([late] if late else [])):
            follower.kill()

    # --once: the run's state (its pending question, its last decision) and its decisions.
    once = env.cli("operator", "--all", "--once", "--json")
    assert once.returncode == 0, once.stderr
    shown = json.loads(once.stdout)
    (run,) = [r for r in shown["runs"] if r["run_id"] == run_id]
    assert run["status"] == "awaiting_guidance" and run["pending_guidance"][0]["question"] == "Which port?"
    assert run["last_decision"]["intent"] == "escalate_guidance" and run["last_decision"]["command"]
    assert [d["intent"] for d in shown["decisions"]].count("escalate_guidance") == 2
    once_text = env.cli("operator", "--ticket", TICKET, "--once")
    assert once_text.returncode == 0, once_text.stderr
    assert f"{run_id}  awaiting_guidance  {TICKET}" in once_text.stdout
    assert "guidance needed: agent: Which port?" in once_text.stdout
    assert "last decision: " in once_text.stdout and "escalate_guidance" in once_text.stdout

    # status shows the run's latest decisions in its operator section.
    status = env.cli("status", "--run-id", run_id)
    assert status.returncode == 0, status.stderr
    section = status.stdout.split("operator:\n", 1)[1]
    assert section.count("escalate_guidance") == 2
