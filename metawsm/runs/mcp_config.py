"""The MCP set-up every run gives its agents: ``.mcp.json`` in the workspace, and a word in the prompt.

``.mcp.json`` at a project's root is where coding agents such as Claude Code read the MCP servers
of a project.  The run writes one into each repository of the workspace (and into the workspace
directory itself when that is the agents' working directory, for a run over several repos).  It
starts ``metawsm mcp`` through the daemon's own shim (``<db dir>/bin/metawsm``), so the server is
always the daemon's version.

What the file leaves out: the agent's name and its token.  Agents of one workspace share the
file, and a token is minted for each start of an agent (and revoked with it), so a token in the
file would be wrong after the first restart and readable by every process that can read the
worktree.  Both come from the agent's session environment, which the agent client passes on to
the servers it starts (docs/agents.md, docs/security.md).

The file must never be committed: ``/.mcp.json`` goes into the repository's ``info/exclude``
(the common git directory's, which linked worktrees share).  A repository that tracks a
``.mcp.json`` of its own keeps it untouched (the run logs that it did not configure MCP there).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("metawsm.runs")

CONFIG_NAME = ".mcp.json"
SERVER_KEY = "metawsm"
EXCLUDE_PATTERN = f"/{CONFIG_NAME}"
EXCLUDE_COMMENT = "# metawsm: the agents' MCP configuration, written by each run (never committed)"
GIT_TIMEOUT = 30.0

PROMPT = """
MCP tools: the `metawsm` MCP server (configured in this workspace's .mcp.json) connects you to the operator
who supervises this run. Use its tools:
- ask(question, context?, options?, urgency?) when you need a decision; it returns at once. Then call
  wait_for_answer(thread_id) until it returns "answered" (after at most 50 s it returns "pending": call it again).
- post_progress(note) at milestones; get_feedback() between steps, for what the operator posted.
- get_brief() for the goal, scope, done criteria, constraints and your workspace paths.
- When the work is committed: complete(summary), then validate(status="passed", done_criteria=<the brief's done
  criteria, exactly>).
"""


def mcp_config(command: str, env: dict[str, str]) -> dict[str, Any]:
    """The ``.mcp.json`` document: one stdio server, ``<command> mcp``."""
    return {"mcpServers": {SERVER_KEY: {"command": command, "args": ["mcp"], "env": env}}}


def config_env(*, server_url: str, run_id: str, ticket: str, workspace: str, run_file: str) -> dict[str, str]:
    """What every agent of the workspace shares (see the module doc for what is left out)."""
    return {"METAWSM_SERVER": server_url, "METAWSM_RUN_ID": run_id, "METAWSM_TICKET": ticket,
            "METAWSM_WORKSPACE": workspace, "METAWSM_RUN_FILE": run_file}


def write_config(directory: Path, config: dict[str, Any]) -> Path | None:
    """Write ``directory/.mcp.json`` (excluded from commits when ``directory`` is a repository's
    root); None when the repository tracks a ``.mcp.json`` of its own, which is left alone."""
    is_repo = _git_root(directory) == directory.resolve()
    if is_repo and _tracked(directory, CONFIG_NAME):
        log.warning("%s tracks its own %s: not configuring metawsm's MCP server there", directory, CONFIG_NAME)
        return None
    if is_repo:
        exclude(directory)
    path = directory / CONFIG_NAME
    _replace(path, json.dumps(config, indent=2) + "\n")
    return path


def exclude(directory: Path) -> Path:
    """Add ``/.mcp.json`` to the ``info/exclude`` of the repository at ``directory`` (once)."""
    common = Path(_git(directory, "rev-parse", "--git-common-dir"))
    path = (directory / common).resolve() / "info" / "exclude"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if EXCLUDE_PATTERN in text.splitlines():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(("" if not text or text.endswith("\n") else "\n") + f"{EXCLUDE_COMMENT}\n{EXCLUDE_PATTERN}\n")
    return path


def _git(directory: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True, timeout=GIT_TIMEOUT)
    if result.returncode != 0:
        raise OSError(f"git {' '.join(args)} in {directory} failed: {result.stderr.strip() or result.returncode}")
    return result.stdout.strip()


def _git_root(directory: Path) -> Path | None:
    try:
        return Path(_git(directory, "rev-parse", "--show-toplevel")).resolve()
    except OSError:
        return None  # not inside a repository (a workspace directory over several repos)


def _tracked(directory: Path, name: str) -> bool:
    result = subprocess.run(["git", "ls-files", "--error-unmatch", "--", name], cwd=directory,
                            capture_output=True, text=True, timeout=GIT_TIMEOUT)
    return result.returncode == 0


def _replace(path: Path, text: str) -> None:
    """Atomically: an agent client reading the file meanwhile sees the old one or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
