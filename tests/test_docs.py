"""The docs are part of the product: every CLI command has help and is in docs/cli.md, and
every HTTP route is in docs/api.md (the route table is what the daemon serves)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from metawsm.api.app import route_table
from metawsm.cli.main import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


def commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from commands(command, path + " ")


COMMANDS = list(commands(cli))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[path for path, _ in COMMANDS])
def test_every_command_has_help(path: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"`metawsm {path}` has no help text"


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS])
def test_every_command_is_in_the_cli_doc(path: str) -> None:
    assert f"metawsm {path}" in (DOCS / "cli.md").read_text(), f"`metawsm {path}` is missing from docs/cli.md"


def documented_path(path: str) -> str:
    """``/api/v1/runs/{run_id}/{action:stop|...}`` → ``/api/v1/runs/{run_id}/{action}``; thread ids
    are written ``{id}`` in the doc's table."""
    path = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)
    return path.replace("{thread_id}", "{id}")


ROUTES = [(route.method, documented_path(route.path)) for route in route_table().routes]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_is_in_the_api_doc(method: str, path: str) -> None:
    assert f"{method} `{path}`" in (DOCS / "api.md").read_text(), f"{method} {path} is missing from docs/api.md"
