"""``metawsm policy-init`` writes the built-in policy; ``metawsm policy check`` validates a policy
file and says what it would change in the running daemon."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from metawsm.cli.client import BadServerUrl, ClientError, DaemonClient, DaemonUnreachable, fail, server_option
from metawsm.cli.main import cli
from metawsm.defaults import DEFAULT_POLICY_PATH

POLICY_ROUTE = "/api/v1/policy"


@cli.command("policy-init")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_POLICY_PATH,
    show_default=True,
    help="Where to write the policy file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing policy file.")
@click.pass_context
def policy_init(ctx: click.Context, policy_path: Path, force: bool) -> None:
    """Write the default policy (every section and default) to --policy.

    Refuses to overwrite an existing file unless --force is given, since the file is meant to
    be hand edited. Fields that have no effect here are left out.
    """
    from metawsm.policy import PolicyError, write_default_policy

    try:
        written = write_default_policy(policy_path, force=force)
    except PolicyError as exc:
        # Rejected input: one line on stderr and exit 2, like click's own usage errors.
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    click.echo(f"wrote default policy to {written}")


@cli.group("policy")
def policy_group() -> None:
    """Check a policy file (see also: metawsm policy-init)."""


@policy_group.command("check")
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(path_type=Path),
    default=DEFAULT_POLICY_PATH,
    show_default=True,
    help="The policy file to check.",
)
@server_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
def policy_check(policy_path: Path, server: str, as_json: bool) -> None:
    """Validate --policy, name its fields that have no effect here, and list what it would change.

    The comparison is with the policy the daemon at --server has in effect. A changed field
    applies to the next run, or, for forum, supervision and debug, after a restart of serve.
    Exit 0 when the file is valid, 2 when it is not (one error line, as serve would print).
    """
    from metawsm.policy import PolicyError, read_policy_file

    try:
        loaded = read_policy_file(policy_path)
    except PolicyError as error:
        fail(str(error), 2)
    report = _report(loaded, server)
    if as_json:
        import msgspec

        click.echo(msgspec.json.encode(report).decode())
    else:
        _print(report)


# --------------------------------------------------------------------------- the report


@functools.cache
def _types() -> Any:
    """The report's msgspec types, built on first use: ``metawsm --help`` does not pay for msgspec."""
    import msgspec

    from metawsm.policy import PolicyChange

    class DaemonView(msgspec.Struct, kw_only=True):
        server: str
        reachable: bool
        path: str = ""  # the file the daemon reads
        error: str = ""  # why the comparison could not be made

    class CheckReport(msgspec.Struct, kw_only=True):
        path: str
        exists: bool
        valid: bool
        warnings: list[str]
        inert_fields: list[str]
        daemon: DaemonView
        changes: list[PolicyChange]

    return DaemonView, CheckReport


def _report(loaded: Any, server: str) -> Any:
    import msgspec

    from metawsm.policy import policy_changes, redacted_policy

    daemon_view, check_report = _types()
    try:
        client = DaemonClient(server)
    except BadServerUrl as error:
        fail(str(error), 2)
    daemon = daemon_view(server=client.server, reachable=False)
    changes: list[Any] = []
    try:
        answer = client.get(POLICY_ROUTE).data or {}
    except DaemonUnreachable:
        pass
    except ClientError as error:  # an older daemon without the route, a token it refuses, ...
        daemon = daemon_view(server=client.server, reachable=True, error=str(error))
    else:
        daemon = daemon_view(server=client.server, reachable=True, path=str(answer.get("path", "")))
        # Both sides masked the same way, so a password never shows up as a difference.
        mine = msgspec.to_builtins(redacted_policy(loaded.policy))
        changes = policy_changes(answer.get("policy") or {}, mine)
    return check_report(path=str(loaded.path), exists=loaded.exists, valid=True, warnings=loaded.warnings,
                        inert_fields=list(loaded.inert_fields), daemon=daemon, changes=changes)


def _shown(value: Any) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, str) and value.strip():
        return value
    import json

    return json.dumps(value)


def _print(report: Any) -> None:
    from metawsm.policy import APPLIES_TEXT

    state = "valid" if report.exists else "no such file; the built-in defaults apply"
    click.echo(f"{report.path}: {state}")
    for warning in report.warnings:
        click.echo(warning)
    daemon = report.daemon
    if not daemon.reachable:
        click.echo(f"daemon not reachable at {daemon.server}: showing the file only")
        return
    if daemon.error:
        click.echo(f"cannot compare with the daemon at {daemon.server} ({daemon.error}): showing the file only")
        return
    if daemon.path and Path(daemon.path) != Path(report.path).absolute():
        click.echo(f"note: the daemon at {daemon.server} reads {daemon.path}, not this file")
    for change in report.changes:
        click.echo(f"{change.field}: {_shown(change.before)} -> {_shown(change.after)} "
                   f"({APPLIES_TEXT[change.applies]})")
    if not report.changes:
        click.echo("no changes")
