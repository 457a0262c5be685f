"""Run commands: run, bootstrap, status, attach, resume, stop, restart, close, cleanup, debug actors,
and delivery: commit, merge, iterate, pr, auth check.

All of them go through the daemon, which hosts the Run and TmuxAgent actors; this module
only builds requests and prints answers.  A run is selected with ``--run-id`` or, with
``--ticket``, the latest run of that ticket.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from metawsm.cli.client import (
    ApiFailure,
    DaemonClient,
    fail,
    json_option,
    path_segment,
    print_json,
    reports_errors,
    server_option,
)
from metawsm.cli.main import cli
from metawsm.runs.attach import attach_argv, inside_server, switch_argv

F = Callable[..., Any]
API = "/api/v1/runs"
RUN_TIMEOUT = 330.0
BRIEF_PROMPTS = (
    ("goal", "Goal"),
    ("scope", "Scope"),
    ("done_criteria", "Done criteria"),
    ("constraints", "Constraints"),
    ("merge_intent", "Merge intent"),
)


def select_options(function: F) -> F:
    function = click.option("--ticket", default="", help="Select the latest run of this ticket.")(function)
    return click.option("--run-id", default="", help="The run's id.")(function)


def _split(values: tuple[str, ...]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def resolve_run_id(client: DaemonClient, run_id: str, ticket: str) -> str:
    if run_id:
        return run_id
    if not ticket:
        fail("select a run with --run-id RUN_ID or --ticket TICKET", 2)
    runs = client.get(API, {"ticket": ticket}).data.get("runs", [])
    if not runs:
        fail(f"no run found for ticket {ticket}", 2)
    return runs[0]["run_id"]


def _printer() -> Any:
    from metawsm.cli.output import Printer

    return Printer()


def _restarts(agent: dict[str, Any]) -> str:
    used = agent.get("restarts_used", 0)
    return f"{used}/{used + (agent.get('restarts_left') or 0)}"


def print_run(snapshot: dict[str, Any]) -> None:
    p = _printer()
    p.line(p.style(snapshot["run_id"], "bold") + f"  {snapshot['mode']}  {snapshot['status']}")
    p.fields([
        ("tickets", ", ".join(snapshot.get("tickets", []))),
        ("repos", ", ".join(snapshot.get("repos", []))),
        ("created", p.time(snapshot.get("created_at"))),
        ("updated", p.time(snapshot.get("updated_at"))),
        ("workspaces", snapshot.get("workspace_root", "")),
        ("error", snapshot.get("error", "")),
    ])
    agents = snapshot.get("agents", [])
    if agents:
        p.line()
        rows = []
        for a in agents:
            age = a.get("last_activity_age_seconds")
            rows.append([
                a["name"], a.get("workspace", ""), a.get("status", ""), a.get("health", "") or "-",
                "-" if age is None else f"{age:.0f}s ago", _restarts(a),
                a.get("session", ""), a.get("workspace_path", ""),
            ])
        p.table(("AGENT", "WORKSPACE", "STATUS", "HEALTH", "ACTIVITY", "RESTARTS", "SESSION", "PATH"), rows)
        for a in agents:
            if a.get("attach_command"):
                p.line(f"attach: {a['attach_command']}")
    if snapshot.get("mode") == "bootstrap" and agents and not snapshot.get("dry_run"):
        p.line()
        p.table(("AGENT", "COMPLETION", "VALIDATION", "DONE CRITERIA"),
                [[a["name"], "yes" if a.get("completion_signalled") else "no", a.get("validation_status") or "-",
                  a.get("validation_done_criteria") or "-"] for a in agents])
    pending = snapshot.get("pending_guidance", [])
    if pending:
        p.line()
        p.line(p.style(f"{len(pending)} pending guidance question(s):", "yellow"))
        for item in pending:
            p.line(f"  {item['agent_name']}: {item['question']}")
            if item.get("context"):
                p.line(f"    context: {item['context']}")
            p.line(f"    answer with: {item['answer_command']}")
    forum = snapshot.get("forum")
    if forum:
        p.line()
        p.fields([("forum threads", forum.get("threads", 0)), ("open", forum.get("open_threads", 0)),
                  ("unanswered", forum.get("unanswered", 0))])
    pulls = snapshot.get("pull_requests", [])
    if pulls:
        p.line()
        p.table(("PR", "REPO", "BRANCH", "STATE", "URL"),
                [[f"#{r['number']}" if r.get("number") else "-", f"{r['repo']} ({r['ticket']})", r.get("branch", ""),
                  r.get("state", ""), r.get("url", "") or "-"] for r in pulls])
    _print_delivery(p, snapshot)
    steps = snapshot.get("steps", [])
    if snapshot.get("dry_run") or any(s.get("status") == "failed" for s in steps):
        p.line()
        p.table(("STEP", "TICKET", "NAME", "STATUS", "ERROR"),
                [[s["ordinal"], s.get("ticket", ""), s["name"], s["status"], s.get("error", "")] for s in steps])


def _print_delivery(p: Any, snapshot: dict[str, Any]) -> None:
    """The Docs, Diffs and Next sections of a run."""
    docs = snapshot.get("docs")
    if docs and not snapshot.get("dry_run"):
        p.line()
        p.line(f"docs: {docs.get('provider', '')}, home repo {docs.get('home_repo', '')}, "
               f"seed mode {docs.get('seed_mode', '')}")
        for row in docs.get("sync", []) or []:
            line = f"  {row['ticket']} in {row['workspace']}: {row['status']}"
            if row.get("revision"):
                line += f" at {row['revision'][:12]}"
            if row.get("error"):
                line += f" ({row['error']})"
            p.line(line)
    diffs = snapshot.get("diffs", [])
    if diffs:
        p.line()
        p.line("diffs:")
        for diff in diffs:
            if diff.get("error"):
                p.line(f"  {diff['repo']} ({diff['workspace']}): {diff['error']}")
                continue
            changed = diff.get("changed", 0)
            p.line(f"  {diff['repo']} ({diff['workspace']}): {changed} uncommitted file(s), "
                   f"{diff.get('ahead', 0)} commit(s) ahead of {diff.get('base_branch', '')}")
            files = diff.get("changed_files", [])
            for name in files:
                p.line(f"    {name}")
            if changed > len(files):
                p.line(f"    ... ({changed - len(files)} more)")
    review = snapshot.get("review")
    if review:
        p.line()
        p.line(f"review feedback: {review.get('queued', 0)} queued, {review.get('dispatched', 0)} dispatched")
    if snapshot.get("next"):
        p.line()
        p.line(f"next: {snapshot['next']}")


def _start(server: str, as_json: bool, body: dict[str, Any]) -> None:
    response = DaemonClient(server, read_timeout=RUN_TIMEOUT).post(API, body, ok=(200,))
    if as_json:
        print_json(response)
        return
    print_run(response.data["run"])


def common_run_options(function: F) -> F:
    for option in reversed([
        click.option("--ticket", "tickets", multiple=True, required=True, help="Ticket(s) to work on (repeatable)."),
        click.option("--repos", "repos", multiple=True, required=True,
                     help="Repo name(s), comma-separated or repeated."),
        click.option("--doc-home-repo", default="", help="Repo holding the ticket docs (default: the first repo)."),
        click.option("--base-branch", default="", help="Branch workspaces start from (default: policy)."),
        click.option("--agent", "agents", multiple=True, help="Agent name(s) from the policy (default: all)."),
        click.option("--dry-run", is_flag=True, help="Plan and print the steps; change nothing."),
    ]):
        function = option(function)
    return function


@cli.command("run")
@common_run_options
@server_option
@json_option
@reports_errors
def run(tickets: tuple[str, ...], repos: tuple[str, ...], doc_home_repo: str, base_branch: str,
        agents: tuple[str, ...], dry_run: bool, server: str, as_json: bool) -> None:
    """Start agents on tickets, each in a tmux session inside a fresh workspace."""
    _start(server, as_json, {
        "mode": "run", "tickets": _split(tickets), "repos": _split(repos), "doc_home_repo": doc_home_repo,
        "base_branch": base_branch, "agents": _split(agents), "cwd": os.getcwd(), "dry_run": dry_run,
    })


@cli.command("bootstrap")
@common_run_options
@click.option("--goal", default="", help="Brief: what the run should achieve.")
@click.option("--scope", default="", help="Brief: what is in and out of scope.")
@click.option("--done-criteria", default="", help="Brief: when it is done (agents must echo it in validation).")
@click.option("--constraints", default="", help="Brief: rules the agents must follow.")
@click.option("--merge-intent", default="", help="Brief: what to do with the result (e.g. merge into main).")
@server_option
@json_option
@reports_errors
def bootstrap(tickets: tuple[str, ...], repos: tuple[str, ...], doc_home_repo: str, base_branch: str,
              agents: tuple[str, ...], dry_run: bool, goal: str, scope: str, done_criteria: str,
              constraints: str, merge_intent: str, server: str, as_json: bool) -> None:
    """Start a bootstrap run: collect a brief, then agents work until completion and validation.

    On a terminal, missing brief fields are asked for; otherwise every field must be given.
    """
    brief: dict[str, Any] = {"goal": goal, "scope": scope, "done_criteria": done_criteria,
                             "constraints": constraints, "merge_intent": merge_intent, "qa": []}
    interactive = sys.stdin.isatty()
    for field, label in BRIEF_PROMPTS:
        if brief[field].strip():
            continue
        if not interactive:
            fail(f'missing required bootstrap intake field "{label}"; provide all fields via flags in '
                 "non-interactive mode", 2)
        while not brief[field].strip():
            brief[field] = click.prompt(label, default="", show_default=False)
    if interactive and not as_json:
        while True:
            question = click.prompt("Question to record for the agents (empty to finish)", default="",
                                    show_default=False)
            if not question.strip():
                break
            answer = click.prompt("Answer", default="", show_default=False)
            brief["qa"].append({"question": question.strip(), "answer": answer.strip()})
    _start(server, as_json, {
        "mode": "bootstrap", "tickets": _split(tickets), "repos": _split(repos), "doc_home_repo": doc_home_repo,
        "base_branch": base_branch, "agents": _split(agents), "cwd": os.getcwd(), "dry_run": dry_run,
        "brief": brief,
    })


@cli.command("status")
@select_options
@server_option
@json_option
@reports_errors
def status(run_id: str, ticket: str, server: str, as_json: bool) -> None:
    """Show a run: agents with health, pending guidance (with the command to answer), forum counts."""
    client = DaemonClient(server)
    run_id = resolve_run_id(client, run_id, ticket)
    response = client.get(f"{API}/{path_segment(run_id)}")
    if as_json:
        print_json(response)
        return
    print_run(response.data["run"])
    _print_operator(client, run_id)


OPERATOR_SHOWN = 5  # the latest decisions `status` shows


def _print_operator(client: DaemonClient, run_id: str) -> None:
    """The Operator section: the run's latest decisions (docs/operator.md), when there are any."""
    try:
        decisions = client.get("/api/v1/operator/decisions", {"run_id": run_id}).data.get("decisions", [])
    except ApiFailure:  # an agent's token may not read them (operator access): no section
        return
    if not decisions:
        return
    p = _printer()
    p.line()
    p.line("operator:")
    for d in decisions[-OPERATOR_SHOWN:]:
        p.line(f"  {p.time(d.get('at'))}  {d.get('intent', '')}  {d.get('reason', '')}")


def choose_agent(snapshot: dict[str, Any], ticket: str, agent: str) -> dict[str, Any]:
    """The one agent of the run that ``--ticket``/``--agent`` designate; exit 2 when not exactly one."""
    run_id, tickets = snapshot["run_id"], snapshot.get("tickets", [])
    agents = snapshot.get("agents", [])
    if ticket and ticket not in tickets:
        fail(f'run {run_id} has no ticket "{ticket}"; its tickets: {", ".join(tickets)}', 2)
    if ticket and len(tickets) > 1:  # one session per agent and ticket
        agents = [a for a in agents if a.get("ticket") == ticket]
    names = list(dict.fromkeys(a["name"] for a in agents))
    if agent:
        if agent not in names:
            fail(f'run {run_id} has no agent "{agent}"; its agents: {", ".join(names) or "none"}', 2)
        agents = [a for a in agents if a["name"] == agent]
    elif len(names) > 1:
        fail(f"run {run_id} has {len(names)} agents ({', '.join(names)}); choose one with --agent", 2)
    if not agents:
        fail(f"run {run_id} has no agents", 2)
    if len(agents) > 1:
        on = ", ".join(a.get("ticket") or a.get("workspace", "") for a in agents)
        fail(f'agent "{agents[0]["name"]}" of run {run_id} works on several tickets ({on}); choose one with --ticket',
             2)
    return agents[0]


def _exec(argv: list[str]) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as error:
        fail(f"cannot run {argv[0]}: {error.strerror or error}; is tmux installed?", 1)


@cli.command("attach")
@select_options
@click.option("--agent", default="", help="The agent (needed when the run has several).")
@server_option
@reports_errors
def attach(run_id: str, ticket: str, agent: str, server: str) -> None:
    """Attach this terminal to an agent's tmux session.

    On a terminal this becomes `tmux attach-session` (or `switch-client` when already inside a
    session of the agents' tmux server); otherwise it prints that command.
    """
    client = DaemonClient(server)
    run_id = resolve_run_id(client, run_id, ticket)
    chosen = choose_agent(client.get(f"{API}/{path_segment(run_id)}").data["run"], ticket, agent)
    if not chosen.get("attach_command"):
        fail(f'agent "{chosen["name"]}" of run {run_id} has no tmux session (status {chosen.get("status", "")}); '
             "resume or restart the run first", 1)
    socket, session = chosen["socket"], chosen["session"]
    argv = attach_argv(socket, session)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo(shlex.join(argv))
        return
    if os.environ.get("TMUX"):
        if inside_server(socket):
            _exec(switch_argv(socket, session))
        # Attaching from a pane of another tmux server would nest one tmux in another (two
        # status bars, the same prefix key for both): say how instead of doing it.
        click.echo(shlex.join(argv))
        click.echo("note: this terminal is inside another tmux; run the command above outside it "
                   "(or prefix it with TMUX= to nest)", err=True)
        return
    _exec(argv)


def _action(action: str, run_id: str, ticket: str, server: str, as_json: bool, body: dict[str, Any]) -> None:
    client = DaemonClient(server, read_timeout=RUN_TIMEOUT)
    run_id = resolve_run_id(client, run_id, ticket)
    # A refused close gate (close_blocked, HTTP 409) exits 1, not 2: ApiFailure knows it.
    response = client.post(f"{API}/{path_segment(run_id)}/{action}", body, ok=(200,))
    if as_json:
        print_json(response)
        return
    data = response.data
    if "run" in data:
        print_run(data["run"])
    else:
        summary = data.get("cleanup", data)
        p = _printer()
        p.line(f"{summary.get('run_id', run_id)}  cleaned up" + ("  (dry run)" if summary.get("dry_run") else ""))
        p.fields([("sessions removed", ", ".join(summary.get("sessions", [])) or "none"),
                  ("workspaces removed", ", ".join(summary.get("workspaces", [])) or
                   ("kept" if summary.get("kept_workspaces") else "none"))])


@cli.command("resume")
@select_options
@server_option
@json_option
@reports_errors
def resume(run_id: str, ticket: str, server: str, as_json: bool) -> None:
    """Start a stopped, paused or failed run's agents again."""
    _action("resume", run_id, ticket, server, as_json, {})


@cli.command("stop")
@select_options
@server_option
@json_option
@reports_errors
def stop(run_id: str, ticket: str, server: str, as_json: bool) -> None:
    """Stop a run: its agents' tmux sessions are ended (workspaces stay)."""
    _action("stop", run_id, ticket, server, as_json, {})


@cli.command("restart")
@select_options
@click.option("--agent", default="", help="Restart only this agent.")
@server_option
@json_option
@reports_errors
def restart(run_id: str, ticket: str, agent: str, server: str, as_json: bool) -> None:
    """Restart a run's agents (fresh sessions, restart budget reset)."""
    _action("restart", run_id, ticket, server, as_json, {"agent": agent})


@cli.command("close")
@select_options
@click.option("--merge", is_flag=True, help="Also merge each workspace branch into the base branch (as `merge`).")
@click.option("--changelog-entry", default="", help="Append this to the ticket's changelog (committed) first.")
@click.option("--dry-run", is_flag=True, help="Check the gates (and, with --merge, the merge); change nothing.")
@server_option
@json_option
@reports_errors
def close(run_id: str, ticket: str, merge: bool, changelog_entry: str, dry_run: bool, server: str,
          as_json: bool) -> None:
    """Close a finished run once its gates pass (exit 1 with the reason when blocked)."""
    body = {"merge": merge, "changelog_entry": changelog_entry, "dry_run": dry_run}
    _lines_on_refusal(("merge_refused",), lambda: _action("close", run_id, ticket, server, as_json, body))
    if dry_run and not as_json:
        click.echo("dry run: the gates pass" + (" and the merge can be made" if merge else "") + "; nothing changed")


@cli.command("cleanup")
@select_options
@click.option("--keep-workspaces", is_flag=True, help="Remove the sessions but keep the workspaces.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@server_option
@json_option
@reports_errors
def cleanup(run_id: str, ticket: str, keep_workspaces: bool, dry_run: bool, server: str, as_json: bool) -> None:
    """Remove a run's tmux sessions and workspaces (stop or close it first)."""
    _action("cleanup", run_id, ticket, server, as_json, {"keep_workspaces": keep_workspaces, "dry_run": dry_run})


COMMIT_TIMEOUT = 3630.0  # the daemon gives the test commands up to an hour


def _lines_on_refusal(codes: tuple[str, ...], call: Callable[[], Any]) -> Any:
    """``call()``; a refusal with one of ``codes`` is printed one ``error:`` line per problem."""
    try:
        return call()
    except ApiFailure as failure:
        if failure.code not in codes:
            raise
        for line in failure.message.splitlines():
            click.echo(f"error: {line}", err=True)
        raise SystemExit(failure.exit_code) from None


def _report(server: str, run_id: str, ticket: str, action: str, body: dict[str, Any], *,
            refusals: tuple[str, ...] = (), timeout: float = COMMIT_TIMEOUT, as_json: bool) -> dict[str, Any] | None:
    """POST a run action and return its report (``data[action]``); None once ``--json`` printed it.

    A refusal with one of ``refusals`` is printed one ``error:`` line per problem.
    """
    client = DaemonClient(server, read_timeout=timeout)
    run_id = resolve_run_id(client, run_id, ticket)
    response = _lines_on_refusal(refusals, lambda: client.post(f"{API}/{path_segment(run_id)}/{action}", body,
                                                                ok=(200,)))
    if as_json:
        print_json(response)
        return None
    report: dict[str, Any] = response.data[action.replace("-", "_")]
    return report


@cli.command("commit")
@select_options
@click.option("--message", "-m", default="", help='Commit message (default: "<ticket>: <first line of the goal>").')
@click.option("--dry-run", is_flag=True, help="Check what can be checked without running the tests; commit nothing.")
@server_option
@json_option
@reports_errors
def commit(run_id: str, ticket: str, message: str, dry_run: bool, server: str, as_json: bool) -> None:
    """Check and commit a run's changes on its branch (exit 1, one line per problem, when a check fails).

    The checks are the policy's git_pr.required_checks: forbidden_files, tests (git_pr.test_commands,
    run in each repository's checkout), clean_tree.  The agent's own commits stay on the branch.
    """
    report = _report(server, run_id, ticket, "commit", {"message": message, "dry_run": dry_run},
                     refusals=("commit_checks_failed",), as_json=as_json)
    if report is None:
        return
    p = _printer()
    p.line(f"{report['run_id']}  commit" + ("  (dry run)" if report.get("dry_run") else ""))
    verbs = {"committed": "committed", "clean": "nothing to commit", "would_commit": "would commit"}
    for repo in report.get("repos", []):
        what = verbs.get(repo["status"], repo["status"])
        if repo["status"] == "committed":
            what += f" {repo['commit'][:12]}"
        elif repo["status"] == "would_commit":
            what += f" {len(repo.get('files', []))} file(s)"
        p.line(f"  {repo['repo']} ({repo['ticket']}): {what} on {repo['branch']}, "
               f"{repo.get('ahead', 0)} commit(s) ahead of {repo['base_branch']}")
        for check in repo.get("checks", []):
            p.line(f"    {check['name']}: {check['status']}")
    if not report.get("repos"):
        p.line("  no repositories")


@cli.command("merge")
@select_options
@click.option("--push", is_flag=True, help="Then push each base branch to origin.")
@click.option("--dry-run", is_flag=True, help="Say what each merge would be, and what refuses it; change nothing.")
@server_option
@json_option
@reports_errors
def merge(run_id: str, ticket: str, push: bool, dry_run: bool, server: str, as_json: bool) -> None:
    """Merge a run's branches into the base branch (fast-forward, else a merge commit).

    Refused as a whole, one line per problem (exit 1), when the base moved in a way that
    conflicts, the base branch's checkout has local changes or a workspace has uncommitted work.
    A clean checkout of the base branch is updated as `git merge` there would.
    """
    report = _report(server, run_id, ticket, "merge", {"push": push, "dry_run": dry_run},
                     refusals=("merge_refused",), as_json=as_json)
    if report is None:
        return
    p = _printer()
    p.line(f"{report['run_id']}  merge" + ("  (dry run)" if report.get("dry_run") else ""))
    dry = bool(report.get("dry_run"))
    words = {"fast_forward": "would fast-forward" if dry else "fast-forwarded",
             "merge_commit": "would get a merge commit" if dry else "merged with a merge commit",
             "up_to_date": "already has everything"}
    for repo in report.get("repos", []):
        at = f" at {repo['commit'][:12]}" if repo.get("commit") else ""
        line = f"  {repo['repo']} ({repo['ticket']}): {repo['base_branch']} {words.get(repo['how'], repo['how'])}{at}"
        if repo.get("checkout") and repo["how"] != "up_to_date":
            line += f", checkout {repo['checkout']}" + (" would be updated" if dry else " updated")
        if repo.get("pushed"):
            line += f", pushed to origin/{repo['base_branch']}"
        p.line(line)
    if not report.get("repos"):
        p.line("  no repositories")


@cli.command("pr")
@select_options
@click.option("--title", default="", help='Pull request title (default: "[<ticket>] <first line of the goal>").')
@click.option("--body", default="", help="Pull request description (default: brief, Q/A, validation, diff stat).")
@click.option("--draft", is_flag=True, help="Open draft pull requests (github provider).")
@click.option("--dry-run", is_flag=True, help="Say what would be pushed and opened; change nothing.")
@server_option
@json_option
@reports_errors
def pr(run_id: str, ticket: str, title: str, body: str, draft: bool, dry_run: bool, server: str,
       as_json: bool) -> None:
    """Push a run's branches to origin and open pull requests (git_pr.provider: auto, github, push).

    With the push provider the branch is pushed and, for a GitHub, GitLab or Bitbucket origin,
    the page that opens the pull request is printed.  The github provider uses the gh CLI
    (see `metawsm auth check`).
    """
    report = _report(server, run_id, ticket, "pr", {"title": title, "body": body, "draft": draft, "dry_run": dry_run},
                     refusals=("pr_refused",), as_json=as_json)
    if report is None:
        return
    p = _printer()
    p.line(f"{report['run_id']}  pr ({report['provider']})" + ("  (dry run)" if report.get("dry_run") else ""))
    for row in report.get("pull_requests", []):
        what = "would push" if report.get("dry_run") else row.get("state", "")
        line = f"  {row['repo']} ({row['ticket']}): {row['branch']} {what}"
        if row.get("number"):
            line += f" #{row['number']}"
        if row.get("url"):
            line += f" {row['url']}"
        p.line(line)
    for reason in report.get("skipped", []):
        p.line(f"  skipped: {reason}")
    if not report.get("pull_requests") and not report.get("skipped"):
        p.line("  no repositories")


@cli.group("review")
def review() -> None:
    """Review feedback of a run's pull requests."""


@review.command("sync")
@select_options
@click.option("--dispatch", is_flag=True, help="Also send the queued feedback to the agents (as `iterate`).")
@server_option
@json_option
@reports_errors
def review_sync(run_id: str, ticket: str, dispatch: bool, server: str, as_json: bool) -> None:
    """Fetch the reviews and review comments of a run's pull requests (github provider).

    Each is stored once and posted in the run's forum (a thread per pull request); authors in
    git_pr.review_feedback.ignore_authors are skipped.  --dispatch sends what is queued to the
    agents, as `metawsm iterate` would.
    """
    report = _report(server, run_id, ticket, "review-sync", {"dispatch": dispatch}, refusals=("pr_refused",),
                     as_json=as_json)
    if report is None:
        return
    line = (f"{report['run_id']}  review sync: {report.get('pull_requests', 0)} pull request(s), "
            f"{report.get('new', 0)} new, {report.get('ignored', 0)} ignored, {report.get('queued', 0)} queued")
    if report.get("dispatched"):
        line += f", {report['dispatched']} dispatched (iteration {report.get('iteration', 0)})"
    click.echo(line)
    for thread in report.get("threads", []):
        click.echo(f"  forum thread: {thread}")


@cli.group("auth")
def auth() -> None:
    """Credentials the delivery commands use."""


@auth.command("check")
@json_option
def auth_check(as_json: bool) -> None:
    """Whether the gh CLI is installed and logged in (the github forge provider needs both); exit 1 if not.

    Checked on this machine, where the daemon runs `gh` too.
    """
    from metawsm.runs.forge import gh_status

    status = gh_status()
    ready = status.installed and status.logged_in
    if as_json:
        click.echo(json.dumps({"gh": {"installed": status.installed, "logged_in": status.logged_in,
                                      "detail": status.detail}, "auto_provider": "github" if ready else "push"}))
    else:
        click.echo(f"gh: installed={'yes' if status.installed else 'no'} "
                   f"logged_in={'yes' if status.logged_in else 'no'}")
        if status.detail:
            click.echo(f"  {status.detail}")
        click.echo(f"git_pr.provider auto uses: {'github' if ready else 'push'}")
    if not ready:
        raise SystemExit(1)


@cli.command("iterate")
@select_options
@click.option("--feedback", default="", help="What the agents should do next (required).")
@click.option("--agent", default="", help="Only this agent (default: every agent of the run).")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@server_option
@json_option
@reports_errors
def iterate(run_id: str, ticket: str, feedback: str, agent: str, dry_run: bool, server: str, as_json: bool) -> None:
    """Send a run back to work with feedback (from completed, running or stopped).

    The feedback is posted in the run's forum, written to <workspace>/.metawsm/feedback.md (never
    committed) and announced in each agent's tmux pane; completion and validation signals from
    before it no longer count for close.
    """
    if not feedback.strip():
        fail("--feedback is required", 2)
    report = _report(server, run_id, ticket, "iterate", {"feedback": feedback, "agent": agent, "dry_run": dry_run},
                     timeout=RUN_TIMEOUT, as_json=as_json)
    if report is None:
        return
    p = _printer()
    if report.get("dry_run"):
        p.line(f"{report['run_id']}  iteration {report['iteration']} (dry run): nothing changed")
    else:
        p.line(f"{report['run_id']}  iteration {report['iteration']}: {report['status']}")
    p.fields([("agents", ", ".join(report.get("agents", [])) or "none"),
              ("feedback files", ", ".join(report.get("files", [])) or "none"),
              ("forum threads", ", ".join(report.get("threads", [])) or "-")])


@cli.group("debug")
def debug() -> None:
    """Inspect the daemon."""


@debug.command("actors")
@click.option("--run-id", default="", help="Only this run's subtree.")
@server_option
@json_option
@reports_errors
def debug_actors(run_id: str, server: str, as_json: bool) -> None:
    """Print the actor tree (state, restarts, mailbox, details)."""
    client = DaemonClient(server)
    path = f"{API}/{path_segment(run_id)}/actors" if run_id else "/api/v1/debug/actors"
    response = client.get(path)
    if as_json:
        print_json(response)
        return
    p = _printer()

    def show(node: dict[str, Any], depth: int) -> None:
        details = node.get("details") or {}
        extra = []
        for key in ("session", "pane_pid", "health", "last_activity_at", "restarts_left", "status", "checkpoint"):
            if details.get(key) not in (None, ""):
                extra.append(f"{key}={details[key]}")
        failure = node.get("last_failure")
        if failure:
            extra.append(f"last_failure={failure.get('type')}: {failure.get('message')}")
        state = node.get("state", "")
        line = (f"{'  ' * depth}{node['name']}  {p.style(state, 'green' if state == 'running' else 'yellow')}"
                f"  restarts={node.get('restarts', 0)} processed={node.get('processed', 0)}"
                f" mailbox={node.get('mailbox', 0)}")
        p.line(line + ("  " + " ".join(extra) if extra else ""))
        for child in node.get("children", []):
            show(child, depth + 1)

    show(response.data["actors"], 0)
