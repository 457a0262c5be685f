"""``metawsm operator``: the operator's decisions (docs/operator.md)."""

from __future__ import annotations

import json
from typing import Any

import click

from metawsm.cli.client import DaemonClient, json_option, reports_errors, server_option
from metawsm.cli.main import cli


def resolving_command(decision: dict[str, Any]) -> str:
    """The command that resolves a decision (for ``escalate_guidance``: answering the question)."""
    if decision.get("intent") == "escalate_guidance":
        from metawsm.runs.snapshot import answer_command

        return answer_command(decision.get("run_id", ""), decision.get("ticket", ""), decision.get("agent_name", ""))
    return ""


@cli.command("operator")
@click.option("--all", "all_runs", is_flag=True, help="Every run (the default).")
@click.option("--ticket", default=None, help="Only the runs of this ticket.")
@click.option("--run-id", default=None, help="Only this run.")
@click.option("--once", is_flag=True, help="Print the decisions taken so far and exit (required in this version).")
@server_option
@json_option
@reports_errors
def operator(all_runs: bool, ticket: str | None, run_id: str | None, once: bool, server: str, as_json: bool) -> None:
    """Print the operator's decisions: time, run, intent, reason, then the command that resolves it.

    The operator runs inside the daemon (docs/operator.md); this command only reads its decisions.
    Following them live is not built yet: `--once` is required.
    """
    if not once:
        click.echo("metawsm operator: following decisions live is not built yet; use --once", err=True)
        raise SystemExit(2)
    if sum((all_runs, ticket is not None, run_id is not None)) > 1:
        click.echo("metawsm operator: give at most one of --all, --ticket, --run-id", err=True)
        raise SystemExit(2)
    query = {"run_id": run_id} if run_id else None
    response = DaemonClient(server).get("/api/v1/operator/decisions", query)
    decisions = [d for d in (response.data or {}).get("decisions", []) if ticket is None or d.get("ticket") == ticket]
    if as_json:
        click.echo(json.dumps({"decisions": [{**d, "command": resolving_command(d)} for d in decisions]}))
        return
    if not decisions:
        click.echo("no operator decisions")
    for d in decisions:
        click.echo(f"{d['at']}  {d['run_id']}  {d['intent']}  {d['reason']}")
        command = resolving_command(d)
        if command:
            click.echo(f"  {command}")
