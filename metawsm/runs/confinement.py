"""Where a run request may reach: repositories and ``cwd`` under the daemon's own directory or a
``workspace.repo_sources`` entry, and no more tickets than ``execution.max_tickets_per_run``.

A run creates worktrees and commits in the repositories it names and starts agents that read a
brief written by the caller.  Whoever may start a run must therefore not be able to point it at
an arbitrary directory of the machine: the daemon's directory (where it was started) and the
sources the policy names are the places its operator chose.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from metawsm.policy import Policy
from metawsm.runs.model import RunError, RunRequest
from metawsm.runs.providers.workspace import resolve_repo


class OutsideAllowedDirectories(RunError):
    code = "forbidden_path"
    status = 403


class TooManyTickets(RunError):
    code = "too_many_tickets"
    status = 400


def allowed_roots(policy: Policy, base_dir: Path) -> list[Path]:
    """The daemon's directory and every ``workspace.repo_sources`` path, resolved."""
    roots = [base_dir.resolve()]
    for source in policy.workspace.repo_sources.values():
        path = Path(source).expanduser()
        roots.append((path if path.is_absolute() else base_dir / path).resolve())
    return roots


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    resolved = path.resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def _shown(roots: list[Path]) -> str:
    return ", ".join(str(root) for root in roots)


def check_run_request(request: RunRequest, policy: Policy, base_dir: Path) -> None:
    """Refuse (403 ``forbidden_path``, 400 ``too_many_tickets``) what the request may not do."""
    limit = policy.execution.max_tickets_per_run
    if len(request.tickets) > limit:
        raise TooManyTickets(f"a run may have at most {limit} tickets (execution.max_tickets_per_run), "
                             f"this request names {len(request.tickets)}")
    roots = allowed_roots(policy, base_dir)
    cwd = Path(request.cwd.strip() or base_dir)
    if not cwd.is_absolute() or not _inside(cwd, roots):
        raise OutsideAllowedDirectories(
            f"cwd {request.cwd.strip()!r} is outside the daemon's directories ({_shown(roots)}); "
            "add the repository to workspace.repo_sources to allow it")
    for name in request.repos:
        name = name.strip()
        if name in policy.workspace.repo_sources:
            continue  # the operator named this source: it is allowed wherever it is
        try:
            path = resolve_repo(name, policy.workspace.repo_sources, os.fspath(cwd))
        except Exception:  # noqa: BLE001 - not found: the planner reports that with its own message
            continue
        if not _inside(path, roots):
            raise OutsideAllowedDirectories(
                f'repo "{name}" resolves to {path}, outside the daemon\'s directories ({_shown(roots)}); '
                "add it to workspace.repo_sources to allow it")
