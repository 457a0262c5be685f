"""How an operator reaches an agent's tmux session: the commands ``attach`` runs and ``status`` shows.

The CLI imports this module, so it uses the standard library only.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

__all__ = ["ATTACHABLE_STATUSES", "attach_argv", "attach_command", "inside_server", "server_socket_path",
           "switch_argv"]

# Agent statuses whose session should exist. A "stopped" agent's session is gone (stop, close),
# except after a clean exit (health "stopped"), where remain-on-exit keeps its pane.
ATTACHABLE_STATUSES = ("pending", "running", "failed")


def attach_argv(socket: str, session: str) -> list[str]:
    """Attach this terminal to exactly ``session`` (``=``: never a session whose name merely starts so)."""
    return ["tmux", "-L", socket, "attach-session", "-t", f"={session}"]


def switch_argv(socket: str, session: str) -> list[str]:
    """From inside a session of the same server: show ``session`` in this client instead."""
    return ["tmux", "-L", socket, "switch-client", "-t", f"={session}"]


def attach_command(socket: str, session: str) -> str:
    """:func:`attach_argv` as one line a shell runs as it is."""
    return shlex.join(attach_argv(socket, session))


def server_socket_path(socket: str, environ: Mapping[str, str] | None = None) -> str:
    """Where the tmux server ``-L socket`` listens: ``$TMUX_TMPDIR`` (or /tmp)/tmux-<uid>/<socket>."""
    env = os.environ if environ is None else environ
    base = env.get("TMUX_TMPDIR") or "/tmp"
    return os.path.join(os.path.realpath(os.path.join(base, f"tmux-{os.getuid()}")), socket)


def inside_server(socket: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a pane of the tmux server ``-L socket``.

    tmux gives its panes ``TMUX=<socket path>,<server pid>,<session index>``.
    """
    env = os.environ if environ is None else environ
    current = env.get("TMUX", "").split(",", 1)[0]
    return bool(current) and os.path.realpath(current) == server_socket_path(socket, env)
