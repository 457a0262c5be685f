"""``metawsm policy-init``: write the built-in policy so it can be edited."""

from __future__ import annotations

from pathlib import Path

import click

from metawsm.cli.main import cli
from metawsm.defaults import DEFAULT_POLICY_PATH


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
    be hand edited.
    """
    from metawsm.policy import PolicyError, write_default_policy

    try:
        written = write_default_policy(policy_path, force=force)
    except PolicyError as exc:
        # Rejected input: one line on stderr and exit 2, like click's own usage errors.
        click.echo(f"error: {exc}", err=True)
        ctx.exit(2)
    click.echo(f"wrote default policy to {written}")
