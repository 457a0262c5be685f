"""The environment an agent's tmux session starts with.

An agent reports through the forum with ``metawsm forum signal ...``, so ``metawsm`` must be on
its PATH and must be the daemon's own program, whatever the daemon's PATH is: a daemon started
by full path (``.venv/bin/metawsm serve``) has no ``metawsm`` on its PATH at all, and another
``metawsm`` on the PATH may be a different version. So the daemon keeps a small shim,
``<directory of its database>/bin/metawsm``, that runs its own interpreter with
``-m metawsm``, and puts that directory first on the agent's PATH.

Everything an agent's environment contains is decided in :func:`agent_env`, in one place.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metawsm.auth.tokens import TokenRegistry

__all__ = ["SHIM_MODE", "SHIM_NAME", "TOKEN_VAR", "AgentIdentity", "agent_env", "agent_path", "install_shim",
           "shim_dir", "shim_text", "with_agent_token"]

SHIM_NAME = "metawsm"
SHIM_MODE = 0o755
TOKEN_VAR = "METAWSM_TOKEN"


@dataclass(frozen=True)
class AgentIdentity:
    """Who the agent is: the ``METAWSM_*`` variables that let it sign its signals."""

    run_id: str
    ticket: str
    agent: str
    workspace: str
    run_file: str  # <workspace>/.metawsm/run.json


def shim_dir(db_path: str | Path) -> Path:
    """``<directory of the database>/bin``: per daemon, like everything else under ``.metawsm``."""
    return Path(db_path).absolute().parent / "bin"


def shim_text(python: str) -> str:
    """A POSIX sh script that runs ``python -m metawsm`` with the caller's arguments."""
    return ("#!/bin/sh\n"
            "# Written by metawsm serve for its agents: runs the daemon's own metawsm.\n"
            f'exec {shlex.quote(python)} -m metawsm "$@"\n')


def install_shim(bin_dir: Path, python: str | None = None) -> Path:
    """Make ``bin_dir/metawsm`` the shim for ``python`` (default: this interpreter).

    Called before each agent (re)start, so a daemon that now runs from another interpreter
    fixes the shim its predecessor left. Nothing is written when the file is already right; a
    change replaces it atomically (a temp file renamed over it), so an agent that runs
    ``metawsm`` at that moment gets the old or the new shim, never half of one.
    """
    interpreter = python or sys.executable
    if not interpreter:  # embedded Pythons may not know their own executable
        raise OSError("cannot write the metawsm shim: the daemon's interpreter is unknown")
    interpreter = os.path.abspath(interpreter)  # not resolved: a venv's python is a symlink that must stay one
    path = bin_dir / SHIM_NAME
    text = shim_text(interpreter)
    if _is_current(path, text):
        return path
    try:
        _replace(path, text)
    except OSError as error:
        raise OSError(f"cannot write the metawsm shim {path}: {error.strerror or error}") from None
    return path


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{SHIM_NAME}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, SHIM_MODE)
        os.replace(temp, path)
    except BaseException:
        _remove(temp)
        raise


def _is_current(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") != text:
            return False
        if path.stat().st_mode & 0o7777 != SHIM_MODE:
            os.chmod(path, SHIM_MODE)  # right content, wrong mode: no need to rewrite it
        return True
    except (OSError, UnicodeDecodeError):
        return False


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def agent_path(bin_dir: Path, daemon_path: str | None = None) -> str:
    """``<bin_dir>:<the daemon's PATH>``, ``bin_dir`` listed once."""
    inherited = os.environ.get("PATH", os.defpath) if daemon_path is None else daemon_path
    first = str(bin_dir)
    return os.pathsep.join([first, *(entry for entry in inherited.split(os.pathsep) if entry and entry != first)])


def agent_env(identity: AgentIdentity, *, server_url: str, bin_dir: Path,
              daemon_path: str | None = None) -> dict[str, str]:
    """The variables set in the agent's session (tmux ``-e``), on top of the tmux server's.

    ``daemon_path`` defaults to this process's PATH.
    """
    return {
        "METAWSM_RUN_ID": identity.run_id,
        "METAWSM_TICKET": identity.ticket,
        "METAWSM_AGENT": identity.agent,
        "METAWSM_WORKSPACE": identity.workspace,
        "METAWSM_SERVER": server_url,
        "METAWSM_RUN_FILE": identity.run_file,
        "PATH": agent_path(bin_dir, daemon_path),
    }


def with_agent_token(env: dict[str, str], tokens: TokenRegistry | None, *, run_id: str, ticket: str,
                     agent: str) -> dict[str, str]:
    """``env`` plus a token of the agent's own, minted now: call it where a process starts.

    A new token per (re)start revokes the previous one of that agent, whose process is gone.
    It is never minted when the daemon merely re-attaches to a live agent (that agent keeps the
    token it was started with).  Without tokens (``serve --no-auth``) the variable is set empty,
    so an operator token in the daemon's own environment can never leak into the session.
    """
    token = tokens.mint_agent_token(run_id, ticket, agent) if tokens is not None else ""
    return {**env, TOKEN_VAR: token}
