"""``metawsm ui`` (the UI's login link) and ``metawsm token rotate``."""

from __future__ import annotations

import os
import sys

import click

from metawsm.cli.client import DaemonClient, fail, json_option, print_json, reports_errors, server_option
from metawsm.cli.main import cli


def _on_a_desktop() -> bool:
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cli.command("ui")
@click.option("--no-open", is_flag=True, help="Only print the link; never start a browser.")
@server_option
@reports_errors
def ui(no_open: bool, server: str) -> None:
    """Print the web UI's login link (and open it in a browser on a desktop).

    The link carries the operator token once: opening it sets a session cookie and removes the
    token from the address bar. Keep it private.
    """
    client = DaemonClient(server)
    token = client.token()
    if client.is_agent:
        fail("an agent token cannot log in to the UI; run `metawsm ui` as the operator", 2)
    link = f"{client.server}/?token={token}" if token else f"{client.server}/"
    click.echo(link)
    if not no_open and sys.stdout.isatty() and _on_a_desktop():
        import webbrowser

        webbrowser.open(link)


@cli.group("token")
def token_group() -> None:
    """The operator token (in .metawsm/token next to the database)."""


@token_group.command("rotate")
@server_option
@json_option
@reports_errors
def rotate(server: str, as_json: bool) -> None:
    """Replace the operator token: the old one, and every UI session, stop working at once.

    Agent tokens are not affected. The CLI of the daemon's user picks up the new token by
    itself; anyone who was given the old one needs the new one.
    """
    response = DaemonClient(server).post("/api/v1/auth/rotate", {}, ok=(200,))
    if as_json:
        print_json(response)
        return
    click.echo(f"rotated: the new operator token is in {response.data['token_file']}; "
               "UI sessions must log in again (`metawsm ui`)")
