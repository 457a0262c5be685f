"""Workspace providers: one git worktree per (workspace, repo), created, inspected, merged, removed.

``git_worktree`` (the default) needs nothing but git: the workspace ``W`` of repo ``R`` is the
worktree ``<workspace.root>/W/R`` on branch ``<branch_prefix>/W``, made from
``<base_branch>`` of the repo's source checkout. ``wsm`` delegates to the ``wsm`` binary when it
is selected and installed.

Every git call is an argv list (no shell), with the variables that would redirect git to
another repository (``GIT_DIR``, ``GIT_WORK_TREE``, ...) removed from its environment.

Safety rules: the user's checkout is never modified behind its back. Worktrees are added next to
it (sharing its object store). A merge fast-forwards the base branch when it can, else makes a
merge commit; when the base branch is checked out somewhere (usually the user's own checkout),
the merge happens there, as `git merge` would, and only when that checkout has no local changes
(else it is refused, naming them); otherwise it happens in a temporary detached worktree and
the base branch ref is moved with a compare-and-swap.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

if TYPE_CHECKING:
    from metawsm.policy import Policy

__all__ = [
    "FALLBACK_EMAIL",
    "FALLBACK_NAME",
    "GitWorktreeProvider",
    "MergeOutcome",
    "RepoPlan",
    "WorkspaceError",
    "WorkspaceProvider",
    "WsmProvider",
    "apply_merge",
    "git_identity_args",
    "plan_merge",
    "resolve_repo",
    "run_git",
    "workspace_provider",
]

FALLBACK_NAME = "metawsm"
FALLBACK_EMAIL = "metawsm@localhost"
GIT_TIMEOUT = 60.0

# Variables that point git at a particular repository/index: never inherit them.
_GIT_LOCATION_VARS = (
    "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX", "GIT_CEILING_DIRECTORIES",
)
_COMPONENT = re.compile(r"[A-Za-z0-9._-]+")


class WorkspaceError(Exception):
    """A workspace could not be planned, created, inspected, merged or removed (one line)."""

    def __init__(self, message: str) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class RepoPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Where one repo of a workspace comes from and goes to (paths as strings: JSON-friendly)."""

    repo: str
    source: str
    dest: str
    branch: str
    base_branch: str

    @property
    def source_path(self) -> Path:
        return Path(self.source)

    @property
    def dest_path(self) -> Path:
        return Path(self.dest)


class WorkspaceProvider(Protocol):
    name: str

    def plan(self, workspace: str, repos: Sequence[str]) -> list[RepoPlan]: ...
    def create(self, workspace: str, repos: Sequence[str]) -> Path: ...
    def delete(self, workspace: str, repos: Sequence[str]) -> None: ...
    def workspace_path(self, workspace: str) -> Path: ...
    def repo_path(self, workspace: str, repo: str) -> Path: ...
    def dirty_files(self, workspace: str, repo: str) -> list[str]: ...
    def last_commit_time(self, workspace: str, repo: str) -> float | None: ...
    def status_fingerprint(self, workspace: str, repo: str) -> str: ...
    def merge(self, workspace: str, repo: str, message: str | None = None) -> str: ...


# --------------------------------------------------------------------------- git plumbing


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def run_git(args: Sequence[str], cwd: str | os.PathLike[str] | None = None, *,
            check: bool = True, what: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``git <args>`` (argv, no shell, no stdin); raise WorkspaceError on failure if ``check``."""
    argv = ["git", *args]
    try:
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=_git_env(),
                                stdin=subprocess.DEVNULL, timeout=GIT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise WorkspaceError("git is not installed (needed by the git_worktree provider)") from None
    except subprocess.TimeoutExpired:
        raise WorkspaceError(f"git {' '.join(args[:3])} timed out after {GIT_TIMEOUT:g}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()
                  or f"exit status {result.returncode}")
        raise WorkspaceError(f"{what or 'git ' + ' '.join(args)} failed: {detail}")
    return result


def _git_out(args: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> str | None:
    """Stripped stdout, or None when git fails."""
    result = run_git(args, cwd, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def git_identity_args(repo: str | os.PathLike[str]) -> list[str]:
    """``-c user.name=... -c user.email=...`` for whatever identity ``repo`` lacks.

    Commits made by metawsm itself (seeded docs, merges) must work on a machine where git was
    never configured; an identity that is configured (config or ``GIT_*`` variables) is kept.
    The same call also turns off commit signing, which would need the user's keys.
    """
    args = ["-c", "commit.gpgsign=false"]
    name = (_git_out(["-C", os.fspath(repo), "config", "user.name"])
            or os.environ.get("GIT_COMMITTER_NAME") and os.environ.get("GIT_AUTHOR_NAME"))
    email = (_git_out(["-C", os.fspath(repo), "config", "user.email"])
             or os.environ.get("GIT_COMMITTER_EMAIL") and os.environ.get("GIT_AUTHOR_EMAIL"))
    if not name:
        args += ["-c", f"user.name={FALLBACK_NAME}"]
    if not email:
        args += ["-c", f"user.email={FALLBACK_EMAIL}"]
    return args


def _toplevel(path: Path) -> Path | None:
    """The resolved top-level directory of the work tree containing ``path``, if any."""
    if not path.is_dir():
        return None
    out = _git_out(["-C", str(path), "rev-parse", "--show-toplevel"])
    return Path(out).resolve() if out else None


def _check_component(kind: str, value: str) -> None:
    if not _COMPONENT.fullmatch(value or "") or value in (".", ".."):
        raise WorkspaceError(f'invalid {kind} name "{value}": use letters, digits, ".", "_" or "-"')


def _worktrees(source: Path) -> list[dict[str, str]]:
    """``git worktree list --porcelain`` as dicts (``worktree``, ``branch``, ``prunable``, ...)."""
    out = run_git(["-C", str(source), "worktree", "list", "--porcelain"],
                  what=f"git worktree list in {source}").stdout
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in out.splitlines():
        if not line.strip():
            if current:
                entries.append(current)
            current = {}
            continue
        key, _, value = line.partition(" ")
        current[key] = value
    if current:
        entries.append(current)
    return entries


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _commit_exists(source: Path, ref: str) -> str | None:
    return _git_out(["-C", str(source), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"])


def _porcelain(path: Path) -> str:
    if not path.is_dir():
        raise WorkspaceError(f"workspace checkout {path} does not exist")
    # --no-optional-locks: never take the index lock an agent's own git commands need.
    return run_git(["--no-optional-locks", "-C", str(path), "status", "--porcelain=v1", "-z", "--untracked-files=all"],
                   what=f"git status in {path}").stdout


def _porcelain_paths(raw: str) -> list[str]:
    entries = raw.split("\0")
    paths: list[str] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        status, path = entry[:2], entry[3:]
        paths.append(path)
        if status[0] in "RC":  # rename/copy: the original path follows
            index += 1
    return paths


def dirty_paths(path: str | os.PathLike[str]) -> list[str]:
    """Paths ``git status --porcelain`` reports for the checkout at ``path`` (untracked too)."""
    return _porcelain_paths(_porcelain(Path(path)))


def last_commit_at(path: str | os.PathLike[str]) -> float | None:
    out = _git_out(["-C", os.fspath(path), "log", "-1", "--format=%ct", "HEAD"])
    return float(out) if out and out.isdigit() else None


def fingerprint(path: str | os.PathLike[str]) -> str:
    """Changes whenever HEAD moves or a file's content/status changes in the checkout.

    Porcelain status alone does not change when an already-modified file is edited again, so
    each dirty path's size and mtime are mixed in.  Polled next to a working agent, so no git
    call here may take the index lock the agent's own ``git add``/``commit`` need.
    """
    checkout = Path(path)
    raw = _porcelain(checkout)
    digest = hashlib.sha256()
    digest.update((_git_out(["--no-optional-locks", "-C", str(checkout), "rev-parse", "HEAD"]) or "no-head").encode())
    digest.update(b"\0" + raw.encode("utf-8", "surrogateescape"))
    for rel in _porcelain_paths(raw):
        try:
            st = (checkout / rel).stat()
            digest.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
        except OSError:
            digest.update(f"\0{rel}\0missing".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


# --------------------------------------------------------------------------- repo resolution


def resolve_repo(name: str, repo_sources: Mapping[str, str], cwd: str | os.PathLike[str]) -> Path:
    """The source checkout for repo ``name``.

    1. ``workspace.repo_sources[name]`` (relative paths against ``cwd``), which must be a git
       repository;
    2. the repository ``cwd`` is in, if its top-level directory is called ``name``;
    3. a git repository (its own top level) named ``name`` next to ``cwd`` or next to the
       current repository's top level.
    """
    _check_component("repo", name)
    base = Path(cwd).absolute()
    if name in repo_sources:
        configured = Path(repo_sources[name]).expanduser()
        path = configured if configured.is_absolute() else base / configured
        top = _toplevel(path)
        if top is None:
            raise WorkspaceError(f'repo "{name}": workspace.repo_sources maps it to {path}, '
                                 f"which is not a git repository")
        return top
    top = _toplevel(base)
    if top is not None and (top.name == name or (base.name == name and _same_path(top, base))):
        return top
    candidates: list[Path] = [base.parent / name]
    if top is not None and not _same_path(top.parent / name, base.parent / name):
        candidates.append(top.parent / name)
    for candidate in candidates:
        found = _toplevel(candidate)
        if found is not None and _same_path(found, candidate):
            return found
    current = f"the current repository {top} is not named \"{name}\"" if top else \
        f"{base} is not in a git repository"
    raise WorkspaceError(
        f'repo "{name}" not found: it is not in workspace.repo_sources, {current}, and there is '
        f"no git repository at {' or '.join(str(c) for c in candidates)}"
    )


# --------------------------------------------------------------------------- merging


class MergeOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What merging a run branch into its base branch does (or did) in one source repository."""

    repo: str
    source: str
    branch: str
    base_branch: str
    how: str  # fast_forward | merge_commit | up_to_date | pull_request (merged on GitHub)
    previous: str  # the base branch's commit before
    commit: str  # the base branch's commit after ("" for a merge commit not made yet)
    checkout: str = ""  # the checkout that has the base branch checked out, updated as `git merge` there would


def _is_ancestor(source: Path, older: str, newer: str) -> bool:
    return run_git(["-C", str(source), "merge-base", "--is-ancestor", older, newer], check=False).returncode == 0


def _local_changes(checkout: Path) -> list[str]:
    """Tracked paths with changes (staged or not) in ``checkout``: what `git merge` there may refuse."""
    raw = run_git(["--no-optional-locks", "-C", str(checkout), "status", "--porcelain=v1", "-z",
                   "--untracked-files=no"], what=f"git status in {checkout}").stdout
    return _porcelain_paths(raw)


def plan_merge(source: Path, repo: str, branch: str, base: str,
               checkout: Path | None) -> tuple[MergeOutcome, list[str]]:
    """What merging ``branch`` into ``base`` of ``source`` would do, and every reason that refuses it
    (one line each).  Reads only: nothing changes."""
    base_ref, problems = f"refs/heads/{base}", []
    old = _git_out(["-C", str(source), "rev-parse", "--verify", "--quiet", base_ref]) or ""
    tip = _git_out(["-C", str(source), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"]) or ""
    if not old:
        problems.append(f'repo "{repo}": base branch "{base}" does not exist in {source}')
    if not tip:
        problems.append(f'repo "{repo}": workspace branch "{branch}" does not exist in {source}')
    if checkout is not None and checkout.is_dir():
        dirty = dirty_paths(checkout)
        if dirty:
            problems.append(f'repo "{repo}": workspace checkout {checkout} has uncommitted changes '
                            f"({', '.join(dirty[:5])}); commit them before merging (metawsm commit)")
    outcome = MergeOutcome(repo=repo, source=str(source), branch=branch, base_branch=base, how="up_to_date",
                           previous=old, commit=old)
    if not old or not tip:
        return outcome, problems
    if _is_ancestor(source, tip, old):
        return outcome, problems
    if _is_ancestor(source, old, tip):
        how, new = "fast_forward", tip
    else:
        how, new = "merge_commit", ""
        tree = run_git(["-C", str(source), "merge-tree", "--write-tree", "--name-only", "--no-messages", old, tip],
                       check=False)
        if tree.returncode == 1:
            files = [line for line in tree.stdout.splitlines()[1:] if line.strip()]
            problems.append(f'repo "{repo}": {base} has moved since {branch} was made and the two conflict in '
                            f"{', '.join(files[:10])}; merge {base} into the workspace branch, resolve, commit, "
                            "then merge again")
        elif tree.returncode != 0:
            problems.append(f'repo "{repo}": cannot check whether {branch} merges into {base}: '
                            f"{tree.stderr.strip() or tree.stdout.strip()}")
    where = next((e["worktree"] for e in _worktrees(source) if e.get("branch") == base_ref), "")
    if where:
        local = _local_changes(Path(where))
        if local:
            problems.append(f'repo "{repo}": {base} is checked out in {where} with local changes '
                            f"({', '.join(local[:5])}); commit or stash them there, then merge again")
    return msgspec.structs.replace(outcome, how=how, commit=new, checkout=where), problems


def apply_merge(outcome: MergeOutcome, message: str) -> MergeOutcome:
    """Make the merge :func:`plan_merge` planned (and found no problem with); the outcome with the
    base branch's new commit."""
    if outcome.how == "up_to_date":
        return outcome
    source, repo, branch, base = Path(outcome.source), outcome.repo, outcome.branch, outcome.base_branch
    base_ref, old = f"refs/heads/{base}", outcome.previous
    if outcome.checkout:
        # The base branch is checked out (usually the user's own checkout, clean): merge there, as
        # `git merge` would, so its files follow the branch.
        where = Path(outcome.checkout)
        if outcome.how == "fast_forward":
            args = ["-C", str(where), "merge", "--ff-only", "--no-edit", branch]
        else:
            args = [*git_identity_args(where), "-C", str(where), "merge", "--no-ff", "--no-edit", "-m", message, branch]
        merged = run_git(args, check=False)
        if merged.returncode != 0:
            conflicts = _git_out(["-C", str(where), "diff", "--name-only", "--diff-filter=U"]) or ""
            run_git(["-C", str(where), "merge", "--abort"], check=False)
            detail = (f"conflicts in {', '.join(conflicts.split())}" if conflicts.strip()
                      else (merged.stderr.strip() or merged.stdout.strip()))
            raise WorkspaceError(f'repo "{repo}": merging {branch} into {base} in {where} failed: {detail}')
        new = run_git(["-C", str(where), "rev-parse", "HEAD"]).stdout.strip()
        return msgspec.structs.replace(outcome, commit=new)
    if outcome.how == "fast_forward":
        run_git(["-C", str(source), "update-ref", "-m", f"metawsm: fast-forward {base} to {branch}", base_ref,
                 outcome.commit, old], what=f'repo "{repo}": moving {base} (did it change meanwhile?)')
        return outcome
    # Not checked out anywhere: merge in a temporary detached worktree, then move the branch with
    # a compare-and-swap.
    scratch = Path(tempfile.mkdtemp(prefix="metawsm-merge-"))
    temp = scratch / repo
    try:
        run_git(["-C", str(source), "worktree", "add", "--detach", str(temp), old],
                what=f'creating a temporary worktree for repo "{repo}"')
        merged = run_git([*git_identity_args(temp), "-C", str(temp), "merge", "--no-ff",
                          "--no-verify", "--no-edit", "-m", message, branch], check=False)
        if merged.returncode != 0:
            conflicts = _git_out(["-C", str(temp), "diff", "--name-only", "--diff-filter=U"]) or ""
            run_git(["-C", str(temp), "merge", "--abort"], check=False)
            detail = (f"conflicts in {', '.join(conflicts.split())}" if conflicts.strip()
                      else (merged.stderr.strip() or merged.stdout.strip()))
            raise WorkspaceError(f'repo "{repo}": merging {branch} into {base} failed: {detail}')
        new = run_git(["-C", str(temp), "rev-parse", "HEAD"]).stdout.strip()
        run_git(["-C", str(source), "update-ref", "-m", f"metawsm: merge {branch}", base_ref, new, old],
                what=f'repo "{repo}": moving {base} (did it change during the merge?)')
        return msgspec.structs.replace(outcome, commit=new)
    finally:
        run_git(["-C", str(source), "worktree", "remove", "--force", str(temp)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
        run_git(["-C", str(source), "worktree", "prune"], check=False)


def _merge_into_base(source: Path, repo: str, branch: str, base: str, message: str,
                     checkout: Path | None) -> str:
    """Merge ``branch`` into local branch ``base`` of ``source``: a fast-forward when the base has
    not moved, else a merge commit; a checkout of the base branch is updated as `git merge` there
    would (refused when it has local changes)."""
    outcome, problems = plan_merge(source, repo, branch, base, checkout)
    if problems:
        raise WorkspaceError(problems[0])
    return apply_merge(outcome, message).commit


class _GitCheckouts:
    """Inspection shared by the providers whose checkouts are git worktrees at ``repo_path``."""

    def repo_path(self, workspace: str, repo: str) -> Path:
        raise NotImplementedError

    def dirty_files(self, workspace: str, repo: str) -> list[str]:
        """Uncommitted paths (modified, staged, deleted, untracked) of the repo's worktree."""
        return dirty_paths(self.repo_path(workspace, repo))

    def last_commit_time(self, workspace: str, repo: str) -> float | None:
        """Committer time (epoch seconds) of the worktree's HEAD, None if there is none."""
        path = self.repo_path(workspace, repo)
        return last_commit_at(path) if path.is_dir() else None

    def status_fingerprint(self, workspace: str, repo: str) -> str:
        """A hash that changes with HEAD and with any file change: the "progress" signal."""
        return fingerprint(self.repo_path(workspace, repo))


# --------------------------------------------------------------------------- git_worktree


class GitWorktreeProvider(_GitCheckouts):
    """Workspaces as plain ``git worktree`` checkouts: ``<root>/<workspace>/<repo>``."""

    name = "git_worktree"

    def __init__(self, root: str | os.PathLike[str], base_branch: str = "main",
                 branch_prefix: str = "task", repo_sources: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.cwd = Path(cwd if cwd is not None else os.getcwd()).absolute()
        root_path = Path(root).expanduser()
        self.root = root_path if root_path.is_absolute() else self.cwd / root_path
        self.base_branch = base_branch
        self.branch_prefix = branch_prefix.strip("/")
        self.repo_sources = dict(repo_sources or {})

    def __repr__(self) -> str:
        return f"GitWorktreeProvider(root={str(self.root)!r}, base_branch={self.base_branch!r})"

    # -- layout ------------------------------------------------------------------------------

    def branch(self, workspace: str) -> str:
        return f"{self.branch_prefix}/{workspace}"

    def workspace_path(self, workspace: str) -> Path:
        _check_component("workspace", workspace)
        return self.root / workspace

    def repo_path(self, workspace: str, repo: str) -> Path:
        _check_component("repo", repo)
        return self.workspace_path(workspace) / repo

    def source(self, repo: str) -> Path:
        return resolve_repo(repo, self.repo_sources, self.cwd)

    def plan(self, workspace: str, repos: Sequence[str]) -> list[RepoPlan]:
        """What :meth:`create` would do; reads git metadata only, changes nothing."""
        _check_component("workspace", workspace)
        if not repos:
            raise WorkspaceError(f"workspace {workspace}: no repos given")
        branch = self.branch(workspace)
        if run_git(["check-ref-format", "--branch", branch], check=False).returncode != 0:
            raise WorkspaceError(f'invalid branch name "{branch}" (workspace.branch_prefix + '
                                 f"workspace name)")
        plans: list[RepoPlan] = []
        for repo in dict.fromkeys(repos):
            plans.append(RepoPlan(repo=repo, source=str(self.source(repo)),
                                  dest=str(self.repo_path(workspace, repo)), branch=branch,
                                  base_branch=self.base_branch))
        return plans

    # -- lifecycle ---------------------------------------------------------------------------

    def create(self, workspace: str, repos: Sequence[str]) -> Path:
        """Add one worktree per repo; returns ``<root>/<workspace>``.

        Idempotent: a repo whose worktree already exists on the workspace branch is left
        alone (so a retried step or ``reuse`` does not fail). ``git worktree add -B`` (re)points
        the workspace branch at the base branch when it is created; a leftover branch of that
        name holding commits the base lacks is refused instead of being reset.
        """
        plans = self.plan(workspace, repos)
        self.workspace_path(workspace).mkdir(parents=True, exist_ok=True)
        for plan in plans:
            self._create_one(plan)
        return self.workspace_path(workspace)

    def _create_one(self, plan: RepoPlan) -> None:
        source, dest = plan.source_path, plan.dest_path
        entry = next((e for e in _worktrees(source) if _same_path(e["worktree"], dest)), None)
        if entry is not None:
            if dest.is_dir():
                if entry.get("branch") == f"refs/heads/{plan.branch}":
                    return
                on = entry.get("branch", "a detached HEAD").removeprefix("refs/heads/")
                raise WorkspaceError(f'repo "{plan.repo}": {dest} is already a worktree of '
                                     f"{source} on {on}, not on {plan.branch}")
            run_git(["-C", str(source), "worktree", "prune"], check=False)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise WorkspaceError(f'repo "{plan.repo}": {dest} already exists and is not a '
                                 f"worktree of {source}")
        if not _commit_exists(source, plan.base_branch):
            raise WorkspaceError(f'repo "{plan.repo}": base branch "{plan.base_branch}" does not '
                                 f"exist in {source} (set workspace.base_branch or --base-branch)")
        # `worktree add -B` resets an existing branch to the base: never throw work away.
        ahead = _git_out(["-C", str(source), "rev-list", "--count",
                          f"{plan.base_branch}..refs/heads/{plan.branch}"])
        if ahead and ahead != "0":
            raise WorkspaceError(f'repo "{plan.repo}": branch {plan.branch} already exists in '
                                 f"{source} with {ahead} commit(s) not in {plan.base_branch}; "
                                 f"merge or delete it, or use another workspace name")
        dest.parent.mkdir(parents=True, exist_ok=True)
        run_git(["-C", str(source), "worktree", "add", "-B", plan.branch, str(dest),
                 plan.base_branch],
                what=f'git worktree add for repo "{plan.repo}" at {dest}')

    def delete(self, workspace: str, repos: Sequence[str]) -> None:
        """Remove the workspace's worktrees (``--force``) and prune; already-gone is fine.

        The workspace branches are kept (the work stays reachable). Afterwards metawsm's own
        ``.metawsm`` folder in the workspace is removed, and the workspace directory if empty.
        """
        for repo in dict.fromkeys(repos):
            dest = self.repo_path(workspace, repo)
            source = self._source_for_delete(repo, dest)
            if source is None:
                continue  # neither a source repo nor a checkout: nothing left to remove
            if dest.exists():
                result = run_git(["-C", str(source), "worktree", "remove", "--force", str(dest)],
                                 check=False)
                if result.returncode != 0 and dest.exists():
                    raise WorkspaceError(f'repo "{repo}": removing worktree {dest} failed: '
                                         f"{result.stderr.strip()}")
            run_git(["-C", str(source), "worktree", "prune"], check=False)
        ws_dir = self.workspace_path(workspace)
        shutil.rmtree(ws_dir / ".metawsm", ignore_errors=True)
        try:
            ws_dir.rmdir()
        except OSError:
            pass  # absent, or holds something that is not ours

    def _source_for_delete(self, repo: str, dest: Path) -> Path | None:
        try:
            return self.source(repo)
        except WorkspaceError:
            pass
        if dest.is_dir():  # the worktree itself knows its repository
            common = _git_out(["-C", str(dest), "rev-parse", "--path-format=absolute",
                               "--git-common-dir"])
            if common:
                return Path(common).parent
        return None

    def merge(self, workspace: str, repo: str, message: str | None = None) -> str:
        """Merge ``<prefix>/<workspace>`` into the base branch; returns the base branch's commit.

        A fast-forward when the base has not moved, else a merge commit (refused on conflicts).
        When the base branch is checked out (typically the user's main checkout), it is merged
        there as `git merge` would, and refused when that checkout has local changes; else in a
        temporary worktree. When there is nothing to merge the current base commit is returned.
        """
        dest = self.repo_path(workspace, repo)
        branch = self.branch(workspace)
        text = message or f"metawsm: merge {branch} into {self.base_branch}"
        return _merge_into_base(self.source(repo), repo, branch, self.base_branch, text, dest)


# --------------------------------------------------------------------------- wsm


class WsmProvider(_GitCheckouts):
    """Delegates workspace creation/removal to the ``wsm`` binary (go-go-golems workspace-manager).

    Assumed subcommands (kept minimal):

    * ``wsm create <ws> --repos a,b --branch <prefix>/<ws> --base-branch <base>``
    * ``wsm path <ws>`` — prints the workspace directory
    * ``wsm delete <ws> --force --force-worktrees --remove-files``

    The checkouts it makes are git worktrees at ``<wsm path>/<repo>``, so inspection and merging
    use git directly, exactly as :class:`GitWorktreeProvider` does.
    """

    name = "wsm"

    def __init__(self, base_branch: str = "main", branch_prefix: str = "task",
                 binary: str = "wsm", root: str | os.PathLike[str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        found = shutil.which(binary)
        if found is None:
            raise WorkspaceError('workspace provider "wsm" is selected but the wsm binary is not '
                                 "installed; use git_worktree")
        self.binary = found
        self.base_branch = base_branch
        self.branch_prefix = branch_prefix.strip("/")
        self.cwd = Path(cwd if cwd is not None else os.getcwd()).absolute()
        self.root = Path(root) if root is not None else None

    def _wsm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run([self.binary, *args], cwd=self.cwd, capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise WorkspaceError(f"wsm {args[0]} failed: {exc}") from None
        if check and result.returncode != 0:
            detail = result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}"
            raise WorkspaceError(f"wsm {args[0]} failed: {detail}")
        return result

    def branch(self, workspace: str) -> str:
        return f"{self.branch_prefix}/{workspace}"

    def workspace_path(self, workspace: str) -> Path:
        _check_component("workspace", workspace)
        result = self._wsm("path", workspace, check=False)
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and lines:
            return Path(lines[-1])
        if self.root is not None:
            return self.root / workspace
        raise WorkspaceError(f"wsm path {workspace} failed: {result.stderr.strip()}")

    def repo_path(self, workspace: str, repo: str) -> Path:
        _check_component("repo", repo)
        return self.workspace_path(workspace) / repo

    def plan(self, workspace: str, repos: Sequence[str]) -> list[RepoPlan]:
        _check_component("workspace", workspace)
        where = self.root / workspace if self.root is not None else Path(f"<wsm>/{workspace}")
        return [RepoPlan(repo=repo, source=repo, dest=str(where / repo),
                         branch=self.branch(workspace), base_branch=self.base_branch)
                for repo in dict.fromkeys(repos)]

    def create(self, workspace: str, repos: Sequence[str]) -> Path:
        for repo in repos:
            _check_component("repo", repo)
        existing = self._wsm("path", workspace, check=False)
        if existing.returncode == 0 and existing.stdout.strip() and \
                Path(existing.stdout.strip().splitlines()[-1]).is_dir():
            return Path(existing.stdout.strip().splitlines()[-1])
        self._wsm("create", workspace, "--repos", ",".join(dict.fromkeys(repos)),
                  "--branch", self.branch(workspace), "--base-branch", self.base_branch)
        return self.workspace_path(workspace)

    def delete(self, workspace: str, repos: Sequence[str]) -> None:
        result = self._wsm("delete", workspace, "--force", "--force-worktrees", "--remove-files",
                           check=False)
        if result.returncode != 0 and self._wsm("path", workspace, check=False).returncode == 0:
            detail = result.stderr.strip() or result.stdout.strip()
            raise WorkspaceError(f"wsm delete {workspace} failed: {detail}")

    def merge(self, workspace: str, repo: str, message: str | None = None) -> str:
        dest = self.repo_path(workspace, repo)
        common = _git_out(["-C", str(dest), "rev-parse", "--path-format=absolute",
                           "--git-common-dir"])
        if not common:
            raise WorkspaceError(f'repo "{repo}": {dest} is not a git checkout')
        branch = self.branch(workspace)
        text = message or f"metawsm: merge {branch} into {self.base_branch}"
        return _merge_into_base(Path(common).parent, repo, branch, self.base_branch, text, dest)


# --------------------------------------------------------------------------- selection


def workspace_provider(policy: Policy, cwd: str | os.PathLike[str] | None = None, *,
                       base_branch: str | None = None) -> GitWorktreeProvider | WsmProvider:
    """The provider ``workspace.provider`` selects; ``base_branch`` overrides the policy's."""
    ws = policy.workspace
    base = base_branch or ws.base_branch
    here = Path(cwd if cwd is not None else os.getcwd()).absolute()
    if ws.provider == "wsm":
        return WsmProvider(base_branch=base, branch_prefix=ws.branch_prefix, cwd=here)
    if ws.provider != "git_worktree":
        raise WorkspaceError(f'unknown workspace provider "{ws.provider}"; use git_worktree or wsm')
    return GitWorktreeProvider(root=ws.root, base_branch=base, branch_prefix=ws.branch_prefix,
                               repo_sources=ws.repo_sources, cwd=here)
