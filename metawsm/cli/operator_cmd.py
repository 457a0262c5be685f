"""``metawsm operator``: the operator's decisions, followed live or as a snapshot (docs/operator.md).

Without ``--once`` the command follows new decisions with the long-poll
``GET /api/v1/operator/decisions?after=N&wait=S``: it starts after the highest decision that exists
when it starts (it prints nothing old), prints each new one as it is stored, and when the daemon goes
away prints one ``reconnecting…`` line on stderr and retries with a capped backoff.  Decision ids
live in SQLite, so after a daemon restart it goes on exactly where it stopped.  Ctrl-C or SIGTERM
ends it with exit 0.  ``--once`` prints the state of the active runs and their decisions and exits.

The helpers here (:func:`resolving_command`, :func:`check_selection`, :func:`stopping_on_signals`)
are shared with ``metawsm watch``.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import click

from metawsm.cli.client import (
    ApiFailure,
    ClientError,
    DaemonClient,
    DaemonUnreachable,
    NoAnswer,
    fail,
    path_segment,
    reports_errors,
    server_option,
)
from metawsm.cli.main import cli

DECISIONS = "/api/v1/operator/decisions"
RUNS = "/api/v1/runs"
WAIT_SECONDS = 25  # per long-poll (the server allows up to 30)
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
ALL_WITH_SELECTOR = "--all cannot be combined with --run-id or --ticket"
# Runs that no longer need anyone: left out of --all / --ticket listings.
INACTIVE_STATUSES = ("closed", "stopped")
# Agent states worth an alert while the run should be working.
UNHEALTHY_HEALTH = ("stalled", "dead")
WORKING_STATUSES = ("running", "awaiting_guidance")


class Stopped(Exception):
    """SIGTERM (or SIGINT) asked a following command to end."""


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread (also inside a blocking read)."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise Stopped

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def check_selection(all_runs: bool, ticket: str | None, run_id: str | None) -> None:
    if all_runs and (ticket or run_id):
        fail(ALL_WITH_SELECTOR, 2)
    if ticket and run_id:
        fail("give --run-id or --ticket, not both", 2)


def _run_flag(decision: dict[str, Any]) -> str:
    return f"--run-id {shlex.quote(str(decision.get('run_id', '')))}"


def resolving_command(decision: dict[str, Any]) -> str:
    """The command a human runs to resolve (or look into) a decision; "" when there is none."""
    intent = decision.get("intent")
    run = _run_flag(decision)
    if intent in ("escalate_guidance", "guidance_needed"):
        from metawsm.runs.snapshot import answer_command  # lazily: the CLI starts without msgspec

        tickets = decision.get("tickets") or []
        ticket = decision.get("ticket") or (tickets[0] if tickets else "")
        return answer_command(str(decision.get("run_id", "")), str(ticket), str(decision.get("agent_name", "")))
    if intent == "escalate_blocked":
        agent = decision.get("agent_name")
        return f"metawsm restart {run}" + (f" --agent {shlex.quote(str(agent))}" if agent else "")
    if intent == "auto_restart":
        return f"metawsm status {run}"
    if intent == "auto_stop_stale":
        return f"metawsm resume {run}"
    if intent == "commit_ready":
        return f"metawsm commit {run}"
    if intent == "pr_ready":
        return f"metawsm pr {run}"
    if intent == "review_feedback_ready":
        return f"metawsm review sync {run} --dispatch"
    return ""


def decision_lines(decision: dict[str, Any]) -> list[str]:
    lines = [f"{decision.get('at', '')}  {decision.get('run_id', '')}  {decision.get('intent', '')}  "
             f"{decision.get('reason', '')}"]
    command = resolving_command(decision)
    if command:
        lines.append(f"  {command}")
    return lines


def with_command(decision: dict[str, Any]) -> dict[str, Any]:
    return {**decision, "command": resolving_command(decision)}


def unhealthy_agents(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The agents of a working run that are stalled, dead or failed."""
    if run.get("status") not in WORKING_STATUSES:
        return []
    return [a for a in run.get("agents", []) if a.get("health") in UNHEALTHY_HEALTH or a.get("status") == "failed"]


def selected_runs(client: DaemonClient, ticket: str | None, run_id: str | None) -> list[dict[str, Any]]:
    """The run of --run-id (404 → exit 2), else the active runs (of --ticket), oldest first."""
    if run_id:
        return [client.get(f"{RUNS}/{path_segment(run_id)}").data["run"]]
    runs = client.get(RUNS, {"ticket": ticket}).data.get("runs", [])
    return sorted((r for r in runs if r.get("status") not in INACTIVE_STATUSES),
                  key=lambda r: (r.get("created_at", ""), r.get("run_id", "")))


# -- --once ----------------------------------------------------------------------------------------


def _run_state(run: dict[str, Any], decisions: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [d for d in decisions if d.get("run_id") == run["run_id"]]
    return {
        "run_id": run["run_id"],
        "status": run.get("status", ""),
        "tickets": run.get("tickets", []),
        "pending_guidance": run.get("pending_guidance", []),
        "unhealthy_agents": [{k: a.get(k) for k in ("name", "workspace", "status", "health", "restarts_used",
                                                    "restarts_left", "last_error")}
                             for a in unhealthy_agents(run)],
        "last_decision": with_command(mine[-1]) if mine else None,
    }


def _once(client: DaemonClient, ticket: str | None, run_id: str | None, as_json: bool) -> None:
    runs = selected_runs(client, ticket, run_id)
    shown = {r["run_id"] for r in runs}
    listed = client.get(DECISIONS, {"run_id": run_id, "ticket": ticket}).data.get("decisions", [])
    decisions = [d for d in listed if d.get("run_id") in shown]
    states = [_run_state(r, decisions) for r in runs]
    if as_json:
        click.echo(json.dumps({"runs": states, "decisions": [with_command(d) for d in decisions]}))
        return
    if not states:
        click.echo("no active runs")
    for state in states:
        click.echo(f"{state['run_id']}  {state['status']}  {', '.join(state['tickets'])}")
        for item in state["pending_guidance"]:
            click.echo(f"  guidance needed: {item.get('agent_name', '')}: {item.get('question', '')}")
            click.echo(f"    answer with: {item.get('answer_command', '')}")
        for agent in state["unhealthy_agents"]:
            used, left = agent.get("restarts_used") or 0, agent.get("restarts_left") or 0
            click.echo(f"  unhealthy: {agent['name']} ({agent.get('health') or agent.get('status')}, "
                       f"restarts {used}/{used + left})")
        last = state["last_decision"]
        if last:
            click.echo(f"  last decision: {last['at']}  {last['intent']}  {last['reason']}")
    click.echo()
    if not decisions:
        click.echo("no operator decisions")
    for decision in decisions:
        for line in decision_lines(decision):
            click.echo(line)


# -- following -------------------------------------------------------------------------------------


def _emit(decision: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(with_command(decision), separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        sys.stdout.write("\n".join(decision_lines(decision)) + "\n")
    sys.stdout.flush()


def _retryable(error: ClientError) -> bool:
    """The daemon is away or restarting: worth waiting for (a 4xx is not)."""
    if isinstance(error, DaemonUnreachable | NoAnswer):
        return True
    return isinstance(error, ApiFailure) and error.status >= 500


def _follow(server: str, ticket: str | None, run_id: str | None, as_json: bool) -> None:
    client = DaemonClient(server, read_timeout=WAIT_SECONDS + 10)
    selection = {"run_id": run_id, "ticket": ticket}
    # The first request fails fast (no daemon → exit 1) and says where "new" begins.
    after = int(client.get(DECISIONS, selection).data.get("next_after", 0))
    scope = f"run {run_id}" if run_id else f"the runs of ticket {ticket}" if ticket else "all runs"
    click.echo(f"Following operator decisions for {scope} (new ones only; Ctrl-C to stop).", err=True)
    backoff, away = BACKOFF_FIRST, False
    while True:
        try:
            page = client.get(DECISIONS, {**selection, "after": after, "wait": WAIT_SECONDS}).data
        except ClientError as error:
            if not _retryable(error):
                raise
            if not away:
                click.echo("reconnecting…", err=True)
                away = True
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        backoff, away = BACKOFF_FIRST, False
        for decision in page.get("decisions", []):
            _emit(decision, as_json)
        after = max(after, int(page.get("next_after", after)))


@cli.command("operator")
@click.option("--all", "all_runs", is_flag=True, help="Every active run (the default).")
@click.option("--ticket", default=None, help="Only the runs of this ticket.")
@click.option("--run-id", default=None, help="Only this run.")
@click.option("--once", is_flag=True, help="Print the active runs' state and decisions, then exit.")
@server_option
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per decision (with --once: one document {runs, decisions}).")
@reports_errors
def operator(all_runs: bool, ticket: str | None, run_id: str | None, once: bool, server: str, as_json: bool) -> None:
    """Follow the operator's decisions: time, run, intent, reason, then the command that resolves it.

    The operator runs inside the daemon (docs/operator.md); this command only reads its decisions.
    Following starts after the newest decision (nothing old is printed); Ctrl-C stops it.
    `--once` prints every active run (status, pending guidance, unhealthy agents, last decision)
    and the decisions of those runs, then exits.
    """
    check_selection(all_runs, ticket, run_id)
    if once:
        _once(DaemonClient(server), ticket, run_id, as_json)
        return
    try:
        with stopping_on_signals():
            _follow(server, ticket, run_id, as_json)
    except (Stopped, KeyboardInterrupt):
        click.echo("Operator stopped.", err=True)

