"""Entry point: the top-level click group and the registration of every sub-command module."""

from __future__ import annotations

import click

from metawsm import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="metawsm")
def cli() -> None:
    """Supervise coding agents: a durable forum, runs and tmux agents behind one daemon.

    Start the daemon with `metawsm serve`; every forum and run command talks to it.
    """


def _register_commands() -> None:
    # Each module owns one command family and adds itself to ``cli``.
    from metawsm.cli import (  # noqa: F401 - importing registers the commands
        auth_cmd,
        forum_cmd,
        health_cmd,
        mcp_cmd,
        operator_cmd,
        policy_cmd,
        runs_cmd,
        serve_cmd,
        watch_cmd,
    )


_register_commands()


def main() -> None:
    cli(prog_name="metawsm")
