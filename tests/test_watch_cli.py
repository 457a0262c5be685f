"""``metawsm watch``: alerts once per cause, a notify command, exit when the run stops (real daemon, tmux)."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Any

from metawsm.cli.watch_cmd import Watcher
from metawsm.waiting import wait_until
from support.agents import LONG_AGENT
from support.background import BackgroundCli

SLA = {"forum": {"sla": {"escalation_minutes": 0.05}}}
TICKET = "T-17"
NOTIFY_SCRIPT = """#!/bin/sh
printf '%s|%s|%s|%s|%s\\n' "$METAWSM_EVENT" "$METAWSM_RUN_ID" "$METAWSM_RUN_STATUS" "$METAWSM_TICKETS" \\
  "$METAWSM_MESSAGE" >> "$1"
"""


class Cli(BackgroundCli):
    def alerts(self, event: str) -> list[str]:
        return [line for line in self.out if f"ALERT {event}:" in line]


def ask(env: Any, run_id: str, question: str) -> None:
    body = {"run_id": run_id, "ticket": TICKET, "agent_name": "agent",
            "payload": {"schema_version": 1, "run_id": run_id, "agent_name": "agent",
                        "control_type": "guidance_request", "question": question}}
    asked = env.api("POST", "/api/v1/forum/control/signal", body)
    assert asked.status in (200, 202), asked


def escalated(env: Any, run_id: str) -> bool:
    result = env.api("GET", f"/api/v1/operator/decisions?run_id={run_id}")
    assert result.status == 200, result
    return any(d["intent"] == "escalate_guidance" for d in result.data["decisions"])


def test_watch_alerts_once_runs_the_notify_command_and_ends_when_the_run_stops(runs_env, tmp_path: Path) -> None:
    env = runs_env(agent=LONG_AGENT, policy=SLA)
    run_id = env.start_run(ticket=TICKET)["run_id"]

    mixed = env.cli("watch", "--all", "--run-id", run_id)
    assert mixed.returncode == 2
    assert mixed.stderr.strip() == "error: --all cannot be combined with --run-id or --ticket"
    unknown = env.cli("watch", "--run-id", "run_nope")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert unknown.stderr.startswith("error: ") and "run_nope" in unknown.stderr

    script = tmp_path / "notify.sh"
    script.write_text(NOTIFY_SCRIPT)
    script.chmod(0o755)
    notified = tmp_path / "notified lines.txt"  # a space: --notify-cmd is split like a shell would
    single = Cli(env, "watch", "--run-id", run_id, "--interval", "0.2",
                 "--notify-cmd", f"{shlex.quote(str(script))} {shlex.quote(str(notified))}")
    every = Cli(env, "watch", "--all", "--interval", "0.2", "--bell", "--notify-cmd", str(tmp_path / "no-such-notifier"))
    try:
        single.wait_for(lambda: single.out[:2] == [f"Watching run {run_id}.",
                                                   "Alerts: guidance needed, run done/failed/stopped, agent unhealthy."],
                        "the banner")
        every.wait_for(lambda: every.out[:1] == ["Watching all active runs."], "the --all banner")

        ask(env, run_id, "Which database?")
        for watch in (single, every):
            watch.wait_for(lambda w=watch: w.alerts("guidance_needed"), "the guidance alert")
        alert = single.alerts("guidance_needed")[0]
        assert alert.startswith("[") and run_id in alert
        hints = single.out[single.out.index(alert) + 1:]
        assert hints[0] == f"  Direction needed for run {run_id}."
        assert any("--type guidance_answer" in hint for hint in hints)
        assert every.alerts("guidance_needed")[0].startswith("\a[")  # --bell

        # Many checks later (every 0.2 s, and the operator's escalation woke them too), still one alert.
        wait_until(lambda: escalated(env, run_id), timeout=30, message="the operator's escalation")
        stopped = env.cli("stop", "--run-id", run_id)
        assert stopped.returncode == 0, stopped.stderr

        assert single.finish() == 0, single.err
        assert len(single.alerts("guidance_needed")) == 1
        assert len(single.alerts("run_stopped")) == 1 and single.out[-2].endswith(f"run {run_id} stopped")
        lines = notified.read_text().splitlines()
        assert [line.split("|")[0] for line in lines] == ["guidance_needed", "run_stopped"]
        event, notified_run, status, tickets, message = lines[0].split("|", 4)
        assert notified_run == run_id and status in ("running", "awaiting_guidance") and tickets == TICKET
        assert "needs guidance" in message
        assert lines[1].split("|")[2] == "stopped"

        every.wait_for(lambda: every.alerts("run_stopped"), "the stop alert in --all")
        assert len(every.alerts("guidance_needed")) == 1
        warnings = [line for line in every.err if line.startswith("warning: notify command failed:")]
        assert len(warnings) == 1 and "no-such-notifier" in warnings[0], every.err  # two alerts, one warning
        every.process.send_signal(signal.SIGTERM)
        assert every.finish() == 0, every.err
        assert every.out[-1] == "Watch stopped."
    finally:
        single.kill()
        every.kill()


def _run(status: str, agents: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"run_id": "run_1", "status": status, "tickets": [TICKET], "created_at": "2026-01-01T00:00:00Z",
            "agents": agents or [], "pending_guidance": [], **extra}


def _agent(health: str, restarts: int = 0, status: str = "running") -> dict[str, Any]:
    return {"name": "agent", "workspace": "ws", "status": status, "health": health, "restarts_used": restarts}


def test_causes_alert_once_and_again_only_when_they_return() -> None:
    watcher = Watcher("http://127.0.0.1:9", None, None, 2.0, [], False)

    def events(run: dict[str, Any]) -> list[str]:
        return [alert.event for alert in watcher.observe([run])]

    assert events(_run("running", [_agent("stalled")])) == ["agent_unhealthy"]
    assert events(_run("running", [_agent("stalled")])) == []
    assert events(_run("running", [_agent("healthy")])) == []
    assert events(_run("running", [_agent("stalled")])) == []  # the same health at the same restart count
    assert events(_run("running", [_agent("dead")])) == ["agent_unhealthy"]
    assert events(_run("running", [_agent("dead", restarts=1)])) == ["agent_unhealthy"]
    asked = {"agent_name": "agent", "question": "Which?", "thread_id": "t1", "answer_command": "metawsm forum"}
    assert events(_run("awaiting_guidance", pending_guidance=[asked])) == ["guidance_needed"]
    assert events(_run("awaiting_guidance", pending_guidance=[asked])) == []
    assert events(_run("running")) == []  # answered: forgotten
    assert events(_run("awaiting_guidance", pending_guidance=[asked])) == ["guidance_needed"]  # asked again
    assert events(_run("completed")) == ["run_done"]
    assert events(_run("closing")) == []
    assert events(_run("completed")) == ["run_done"]  # done again after being reopened
    assert events(_run("closed")) == []  # completed, then closed: one "done"
    assert events(_run("closed")) == []  # no longer tracked
    assert events(_run("failed", error="boom")) == ["run_failed"]
