"""Docs providers: a ticket's folder of working docs, ``<repo>/ttmp/<ticket>/``.

* ``builtin`` (default): plain files — ``index.md``, ``tasks.md``, ``changelog.md`` — or a copy
  of the ticket folder from the source checkout when it has one.
* ``docmgr``: the same layout, scaffolded by the ``docmgr`` binary (only when installed).
* ``none``: no doc steps at all (``enabled`` is False; every method does nothing).

Seeded docs are committed in the workspace straight away, so the workspace stays clean for
the close gate ("has uncommitted changes; close blocked") unless the agent changes something.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from metawsm.runs.providers.workspace import WorkspaceError, git_identity_args, run_git

if TYPE_CHECKING:
    from metawsm.policy import Policy

__all__ = [
    "DOCS_ROOT",
    "SEED_MODES",
    "BuiltinDocs",
    "DocmgrDocs",
    "DocsError",
    "NoDocs",
    "docs_provider",
]

DOCS_ROOT = "ttmp"
SEED_MODES = ("none", "copy_from_repo_on_start")
_TICKET = re.compile(r"[A-Za-z0-9._-]+")


class DocsError(Exception):
    """A ticket or its docs could not be verified or seeded (one line)."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class BuiltinDocs:
    """Ticket docs as plain markdown files under ``ttmp/<ticket>/``."""

    name = "builtin"
    enabled = True

    def verify_ticket(self, ticket: str) -> str:
        """The ticket, if it is a safe single path component (letters, digits, ``-_.``)."""
        if not isinstance(ticket, str) or not _TICKET.fullmatch(ticket) or ticket in (".", ".."):
            raise DocsError(f'invalid ticket "{ticket}"')
        return ticket

    def ticket_dir(self, repo_path: str | os.PathLike[str], ticket: str) -> Path:
        return Path(repo_path) / DOCS_ROOT / self.verify_ticket(ticket)

    def seed(self, workspace_repo: str | os.PathLike[str],
             source_repo: str | os.PathLike[str] | None, ticket: str,
             seed_mode: str = "copy_from_repo_on_start", *, title: str | None = None) -> list[Path]:
        """Put the ticket's docs into the workspace checkout and commit them.

        With ``copy_from_repo_on_start``: when the worktree lacks ``ttmp/<ticket>/`` it is
        copied from the source checkout (which may hold docs not committed yet), or else
        created fresh. Then whatever is new or changed under ``ttmp/<ticket>`` is committed
        (``metawsm: seed ticket docs for <ticket>``), with a fallback identity when git has
        none. Returns the files written (empty when there was nothing to do); ``none`` does
        nothing. Safe to call again (a retried step commits what an earlier try left).
        """
        self.verify_ticket(ticket)
        if seed_mode not in SEED_MODES:
            raise DocsError(f'unknown docs seed mode "{seed_mode}"; use none or '
                            f"copy_from_repo_on_start")
        if seed_mode == "none":
            return []
        workspace = Path(workspace_repo)
        if not workspace.is_dir():
            raise DocsError(f"cannot seed docs for {ticket}: workspace checkout {workspace} "
                            f"does not exist")
        dest = self.ticket_dir(workspace, ticket)
        written: list[Path] = []
        if not dest.exists():
            source = self.ticket_dir(source_repo, ticket) if source_repo is not None else None
            if source is not None and source.is_dir():
                shutil.copytree(source, dest, symlinks=True,
                                ignore=shutil.ignore_patterns(".git"))
                written = sorted(p for p in dest.rglob("*") if p.is_file())
            else:
                written = self._scaffold(workspace, dest, ticket, title or ticket)
        self._commit(workspace, ticket)
        return written

    def _scaffold(self, workspace: Path, dest: Path, ticket: str, title: str) -> list[Path]:
        today = date.today().isoformat()
        files = {
            "index.md": (f"# {title}\n\n"
                         f"- Ticket: {ticket}\n"
                         f"- Created: {today}\n\n"
                         f"Working docs for ticket {ticket}: keep tasks in tasks.md and "
                         f"notable changes in changelog.md.\n"),
            "tasks.md": "# Tasks\n\n## TODO\n\n- [ ] Add tasks here\n",
            "changelog.md": f"# Changelog\n\n## {today}\n\n- Ticket docs created\n",
        }
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for name, text in files.items():
            path = dest / name
            path.write_text(text, encoding="utf-8")
            written.append(path)
        return written

    def _commit(self, workspace: Path, ticket: str) -> None:
        rel = f"{DOCS_ROOT}/{ticket}"
        try:
            status = run_git(["-C", str(workspace), "status", "--porcelain", "--untracked-files=all",
                              "--", rel], what=f"git status in {workspace}").stdout
            if not status.strip():
                return  # already committed, or ignored by the repo: nothing to do
            run_git(["-C", str(workspace), "add", "--", rel], what=f"git add {rel}")
            run_git([*git_identity_args(workspace), "-C", str(workspace), "commit", "--no-verify",
                     "-q", "-m", f"metawsm: seed ticket docs for {ticket}", "--", rel],
                    what=f"committing the docs of {ticket}")
        except WorkspaceError as exc:
            raise DocsError(str(exc)) from None


class DocmgrDocs(BuiltinDocs):
    """Ticket docs scaffolded by ``docmgr ticket create-ticket`` (same ``ttmp/<ticket>`` layout).

    Assumed invocation, run in the workspace checkout: ``docmgr ticket create-ticket --ticket T
    --title TITLE --root ttmp --path-template {{TICKET}}``. Copying from the source checkout
    and committing work as for the builtin provider.
    """

    name = "docmgr"

    def __init__(self, binary: str = "docmgr") -> None:
        found = shutil.which(binary)
        if found is None:
            raise DocsError('docs provider "docmgr" is selected but the docmgr binary is not '
                            "installed; use builtin or none")
        self.binary = found

    def _scaffold(self, workspace: Path, dest: Path, ticket: str, title: str) -> list[Path]:
        argv = [self.binary, "ticket", "create-ticket", "--ticket", ticket, "--title", title,
                "--root", DOCS_ROOT, "--path-template", "{{TICKET}}"]
        try:
            result = subprocess.run(argv, cwd=workspace, capture_output=True, text=True,
                                    stdin=subprocess.DEVNULL, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DocsError(f"docmgr create-ticket {ticket} failed: {exc}") from None
        if result.returncode != 0 or not dest.is_dir():
            detail = result.stderr.strip() or result.stdout.strip() or "no ticket folder created"
            raise DocsError(f"docmgr create-ticket {ticket} failed: {detail}")
        return sorted(p for p in dest.rglob("*") if p.is_file())


class NoDocs:
    """``docs.provider: none``: no ticket docs, no doc steps, no doc gates."""

    name = "none"
    enabled = False

    def verify_ticket(self, ticket: str) -> str:
        return ticket

    def ticket_dir(self, repo_path: str | os.PathLike[str], ticket: str) -> None:
        return None

    def seed(self, workspace_repo: str | os.PathLike[str],
             source_repo: str | os.PathLike[str] | None, ticket: str,
             seed_mode: str = "none", *, title: str | None = None) -> list[Path]:
        return []


def docs_provider(policy: Policy) -> BuiltinDocs | DocmgrDocs | NoDocs:
    """The provider ``docs.provider`` selects (``docmgr`` raises DocsError when not installed)."""
    provider = policy.docs.provider
    if provider == "builtin":
        return BuiltinDocs()
    if provider == "none":
        return NoDocs()
    if provider == "docmgr":
        return DocmgrDocs()
    raise DocsError(f'unknown docs provider "{provider}"; use builtin, docmgr or none')
