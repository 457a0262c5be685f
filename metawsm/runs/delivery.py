"""Delivery of a run's work: the commit checks and the commit itself (``metawsm commit``).

Everything here is git and subprocess work on the run's checkouts, with no database and no
actor: the ``Run`` actor gathers what it needs (:class:`CommitJob`), runs :func:`commit` on a
worker thread so its mailbox never waits on git or on the test commands, and records the
outcome (a step and an event) on its own thread.

The commit is made on the run's branch, on top of whatever the agent committed itself: the
agent's commits are kept. The checks of ``git_pr.required_checks`` run for every repository
with changes *before* anything is committed, so a failed check commits nothing anywhere.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import msgspec

from metawsm.clock import now_text
from metawsm.runs import forge
from metawsm.runs.model import RunError
from metawsm.runs.providers.workspace import (
    MergeOutcome,
    WorkspaceError,
    apply_merge,
    fingerprint,
    git_identity_args,
    plan_merge,
    run_git,
)

__all__ = [
    "CHECK_CLEAN_TREE",
    "CHECK_FORBIDDEN_FILES",
    "CHECK_TESTS",
    "CHECK_TICKET_WORKFLOW",
    "CheckResult",
    "ChecksFailed",
    "CommitJob",
    "CommitReport",
    "CommitSettings",
    "IterateReport",
    "MergeJob",
    "MergeRefused",
    "MergeReport",
    "RepoCommit",
    "RepoMerge",
    "append_changelog",
    "exclude_metawsm",
    "feedback_section",
    "commit",
    "merge",
    "default_message",
    "forbidden_matches",
    "head_of",
    "log_path_for",
    "merge_summary",
    "source_of",
    "summary",
]

CHECK_TESTS = "tests"
CHECK_FORBIDDEN_FILES = "forbidden_files"
CHECK_CLEAN_TREE = "clean_tree"
CHECK_TICKET_WORKFLOW = "ticket_workflow"
TEST_TIMEOUT = 1800.0  # one test command may run for half an hour
MESSAGE_SUMMARY_MAX = 72
# git status --porcelain codes of a conflicted (unmerged) path
_UNMERGED = frozenset({"DD", "AU", "UD", "UA", "DU", "AA", "UU"})
# files in the git directory that say a merge, rebase, cherry-pick or revert is under way
_GIT_LOCATION = frozenset({"GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY",
                           "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_PREFIX"})
_IN_PROGRESS = (("MERGE_HEAD", "a merge"), ("rebase-merge", "a rebase"), ("rebase-apply", "a rebase"),
                ("CHERRY_PICK_HEAD", "a cherry-pick"), ("REVERT_HEAD", "a revert"))


class ChecksFailed(RunError):
    """A commit check failed: one line per problem, nothing was committed.  HTTP 409; the CLI
    exits 1 (the work is not ready yet, the command was right: see exit_codes.EXCEPTIONS)."""

    code = "commit_checks_failed"
    status = 409


class CheckResult(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    status: str  # passed | failed | skipped
    problems: list[str] = []


class RepoCommit(msgspec.Struct, frozen=True, kw_only=True):
    """What ``commit`` did (or, in a dry run, would do) in one repository of one workspace."""

    ticket: str
    workspace: str
    repo: str
    path: str
    branch: str
    base_branch: str
    status: str  # committed | clean | would_commit
    commit: str = ""  # the new commit (committed), else the branch's head
    files: list[str] = []  # the uncommitted paths the commit takes (or would take)
    ahead: int = 0  # commits on the branch that the base branch lacks, the agent's included
    checks: list[CheckResult] = []


class CommitReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    dry_run: bool
    message: str
    log_path: str
    repos: list[RepoCommit]


class CommitJob(msgspec.Struct, frozen=True, kw_only=True):
    """One repository checkout of a run to commit."""

    ticket: str
    workspace: str
    repo: str
    path: str
    branch: str
    base_branch: str
    message: str


class CommitSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The ``git_pr`` fields commit honours, from the run's own policy."""

    required_checks: list[str]
    require_all: bool
    test_commands: list[str]
    forbidden_file_patterns: list[str]


def default_message(ticket: str, goal: str, run_id: str) -> str:
    """``<ticket>: <first line of the brief's goal>``, else ``<ticket>: apply run <id> updates``."""
    summary = next((line.strip() for line in goal.splitlines() if line.strip()), "") or f"apply run {run_id} updates"
    if len(summary) > MESSAGE_SUMMARY_MAX:
        summary = summary[:MESSAGE_SUMMARY_MAX - 3].rstrip() + "..."
    return f"{ticket}: {summary}"


def forbidden_matches(path: str, patterns: Sequence[str]) -> str | None:
    """The first pattern that forbids ``path``: a glob on the whole path or on its file name, or
    a directory the path lies in (``secrets/`` or ``secrets``)."""
    name = PurePosixPath(path).name
    for pattern in patterns:
        if fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(name, pattern):
            return pattern
        prefix = pattern.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            return pattern
    return None


# --------------------------------------------------------------------------- git reading


def _status_entries(path: Path) -> list[tuple[str, str]]:
    """(two-letter status, path) for every uncommitted path of the checkout, untracked included."""
    raw = run_git(["--no-optional-locks", "-C", str(path), "status", "--porcelain=v1", "-z", "--untracked-files=all"],
                  what=f"git status in {path}").stdout
    entries = raw.split("\0")
    out: list[tuple[str, str]] = []
    index = 0
    while index < len(entries):
        entry = entries[index]
        index += 1
        if len(entry) < 4:
            continue
        code, name = entry[:2], entry[3:]
        out.append((code, name))
        if code[0] in "RC":  # rename/copy: the original path follows
            index += 1
    return out


def _committed_paths(path: Path, base: str) -> list[str]:
    """Paths the branch's own commits add or change (deletions left out) since the base branch."""
    result = run_git(["-C", str(path), "diff", "--name-only", "-z", "--diff-filter=d", f"{base}...HEAD"], check=False)
    if result.returncode != 0:
        return []
    return [name for name in result.stdout.split("\0") if name]


def _ahead(path: Path, base: str) -> int:
    result = run_git(["-C", str(path), "rev-list", "--count", f"{base}..HEAD"], check=False)
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else 0


def commits_ahead(path: Path, base: str) -> int:
    """Commits on the checkout's branch that ``base`` lacks (0 when git cannot tell)."""
    return _ahead(path, base)


def _head(path: Path) -> str:
    return run_git(["-C", str(path), "rev-parse", "HEAD"], what=f"git rev-parse HEAD in {path}").stdout.strip()


# --------------------------------------------------------------------------- checks


def _label(job: CommitJob) -> str:
    return f"{job.repo} ({job.workspace})"


def _tree_problems(job: CommitJob, entries: list[tuple[str, str]]) -> list[str]:
    """clean_tree before committing: on the run's branch, nothing conflicted or half done."""
    path, label = Path(job.path), _label(job)
    problems: list[str] = []
    head = run_git(["-C", str(path), "symbolic-ref", "-q", "--short", "HEAD"], check=False).stdout.strip()
    if head != job.branch:
        where = f"on {head}" if head else "detached"
        problems.append(f"{label}: HEAD is {where}, not on the run's branch {job.branch}")
    for code, name in entries:
        if code in _UNMERGED:
            problems.append(f"{label}: conflicted file {name}")
    for marker, what in _IN_PROGRESS:
        git_path = run_git(["-C", str(path), "rev-parse", "--git-path", marker], check=False).stdout.strip()
        if git_path and (path / git_path).exists():
            problems.append(f"{label}: {what} is in progress; finish or abort it")
    return problems


def _forbidden_problems(job: CommitJob, entries: list[tuple[str, str]], patterns: Sequence[str]) -> list[str]:
    label = _label(job)
    problems: list[str] = []
    for code, name in entries:
        if code.strip() == "D":  # deleting a forbidden file is welcome
            continue
        pattern = forbidden_matches(name, patterns)
        if pattern is not None:
            problems.append(f'{label}: forbidden file {name} (pattern "{pattern}")')
    for name in _committed_paths(Path(job.path), job.base_branch):
        pattern = forbidden_matches(name, patterns)
        if pattern is not None:
            problems.append(f'{label}: forbidden file {name} (pattern "{pattern}"), committed on {job.branch}')
    return list(dict.fromkeys(problems))


def _test_env() -> dict[str, str]:
    """The daemon's environment, minus what would point git at another repository."""
    return {k: v for k, v in os.environ.items() if not (k.startswith("GIT_") and k in _GIT_LOCATION)}


def _run_tests(job: CommitJob, commands: Sequence[str], log_path: Path) -> list[str]:
    """Each test command in the repository's checkout, in order; the first failure ends it.
    Everything the commands print goes to ``log_path``."""
    label = _label(job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8", errors="replace") as log:
        for command in commands:
            log.write(f"--- {now_text()} {label}: $ {command}\n")
            log.flush()
            try:
                result = subprocess.run(["/bin/sh", "-c", command], cwd=job.path, env=_test_env(),
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        timeout=TEST_TIMEOUT, check=False)
            except subprocess.TimeoutExpired:
                log.write(f"--- timed out after {TEST_TIMEOUT:g}s\n")
                return [f'{label}: test command "{command}" timed out after {TEST_TIMEOUT:g}s (output in {log_path})']
            except OSError as error:
                log.write(f"--- could not run: {error}\n")
                return [f'{label}: test command "{command}" could not run: {error}']
            log.write(f"--- exit status {result.returncode}\n")
            if result.returncode != 0:
                return [f'{label}: test command "{command}" failed with exit status {result.returncode} '
                        f"(output in {log_path})"]
    return []


def _check_repo(job: CommitJob, entries: list[tuple[str, str]], settings: CommitSettings, log_path: Path,
                dry_run: bool) -> list[CheckResult]:
    results: list[CheckResult] = []
    before = fingerprint(job.path)
    tests_ran = False
    for name in settings.required_checks:
        if name == CHECK_FORBIDDEN_FILES:
            problems = _forbidden_problems(job, entries, settings.forbidden_file_patterns)
        elif name == CHECK_TESTS:
            if dry_run or not settings.test_commands:
                results.append(CheckResult(name=name, status="skipped"))
                continue
            problems = _run_tests(job, settings.test_commands, log_path)
            tests_ran = True
        elif name == CHECK_CLEAN_TREE:
            problems = _tree_problems(job, entries)
        else:  # ticket_workflow: the staged ticket workflow of the Go version is not used here
            results.append(CheckResult(name=name, status="skipped"))
            continue
        results.append(CheckResult(name=name, status="failed" if problems else "passed", problems=problems))
    if tests_ran and CHECK_CLEAN_TREE in settings.required_checks and fingerprint(job.path) != before:
        # The test commands left the checkout changed (build output, rewritten files): what would be
        # committed is no longer what was checked.
        after = {name for _, name in _status_entries(Path(job.path))}
        new = sorted(after - {name for _, name in entries})
        what = f" ({', '.join(new[:5])})" if new else ""
        problem = f"{_label(job)}: the test commands changed the working tree{what}; clean up or ignore their output"
        results = [CheckResult(name=r.name, status="failed", problems=[*r.problems, problem])
                   if r.name == CHECK_CLEAN_TREE else r for r in results]
    return results


def _passed(results: list[CheckResult], require_all: bool) -> bool:
    applicable = [r for r in results if r.status != "skipped"]
    if not applicable:
        return True
    if require_all:
        return all(r.status == "passed" for r in applicable)
    return any(r.status == "passed" for r in applicable)


# --------------------------------------------------------------------------- commit


def commit(run_id: str, jobs: Sequence[CommitJob], settings: CommitSettings, *, message: str, log_path: Path,
           dry_run: bool) -> CommitReport:
    """Check every repository with changes, then (unless ``dry_run``) commit each one.

    Raises :class:`ChecksFailed` with one line per problem when a check fails (nothing is
    committed then, in any repository) and ``WorkspaceError`` when git refuses.
    """
    checked: list[tuple[CommitJob, list[tuple[str, str]], list[CheckResult]]] = []
    problems: list[str] = []
    for job in jobs:
        path = Path(job.path)
        if not path.is_dir():
            raise WorkspaceError(f"repo {job.repo} of workspace {job.workspace}: checkout {path} does not exist")
        entries = _status_entries(path)
        results = _check_repo(job, entries, settings, log_path, dry_run) if entries else []
        if entries and not _passed(results, settings.require_all):
            problems += [p for r in results if r.status == "failed" for p in r.problems]
        checked.append((job, entries, results))
    if problems:
        raise ChecksFailed("\n".join(problems))
    repos: list[RepoCommit] = []
    for job, entries, results in checked:
        path = Path(job.path)
        status = "clean" if not entries else "would_commit" if dry_run else "committed"
        if status == "committed":
            run_git(["-C", str(path), "add", "-A"], what=f"git add in {path}")
            run_git([*git_identity_args(path), "-C", str(path), "commit", "-q", "-m", job.message or message],
                    what=f"git commit in {path}")
        repos.append(RepoCommit(ticket=job.ticket, workspace=job.workspace, repo=job.repo, path=job.path,
                                branch=job.branch, base_branch=job.base_branch, status=status, commit=_head(path),
                                files=[name for _, name in entries], ahead=_ahead(path, job.base_branch),
                                checks=results))
    return CommitReport(run_id=run_id, dry_run=dry_run, message=message, log_path=str(log_path), repos=repos)


def summary(report: CommitReport) -> str:
    """One line for the run's events."""
    parts = []
    for repo in report.repos:
        what = {"committed": f"committed {repo.commit[:12]}", "clean": "nothing to commit",
                "would_commit": f"would commit {len(repo.files)} file(s)"}.get(repo.status, repo.status)
        parts.append(f"{repo.repo}@{repo.workspace}: {what} ({repo.ahead} ahead of {repo.base_branch})")
    return "; ".join(parts) or "no repositories"


def log_path_for(base_dir: str | os.PathLike[str], run_id: str) -> Path:
    """Where a run's delivery output (the test commands') is kept."""
    return Path(base_dir) / ".metawsm" / "logs" / f"run-{run_id}.log"


# --------------------------------------------------------------------------- merge


class MergeRefused(RunError):
    """A merge that cannot be made as it stands (conflicts with a base that moved, local changes
    in the base branch's checkout, uncommitted work, no ``origin`` to push to): one line per
    problem, nothing was merged.  HTTP 409; the CLI exits 1 (see exit_codes.EXCEPTIONS)."""

    code = "merge_refused"
    status = 409


class MergeJob(msgspec.Struct, frozen=True, kw_only=True):
    """One repository of one workspace of a run, to merge into its base branch."""

    ticket: str
    workspace: str
    repo: str
    source: str  # the source repository (whose base branch moves)
    checkout: str  # the workspace's checkout (must have nothing uncommitted)
    branch: str
    base_branch: str
    message: str  # of a merge commit
    pull_request: int = 0  # an open GitHub pull request of the branch: `merge --push` merges it there


class RepoMerge(MergeOutcome, frozen=True, kw_only=True):
    ticket: str
    workspace: str
    pushed: bool = False


class MergeReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    dry_run: bool
    push: bool
    repos: list[RepoMerge]


def _repo_merge(job: MergeJob, outcome: MergeOutcome, pushed: bool = False) -> RepoMerge:
    return RepoMerge(**msgspec.structs.asdict(outcome), ticket=job.ticket, workspace=job.workspace, pushed=pushed)


def merge(run_id: str, jobs: Sequence[MergeJob], *, push: bool, dry_run: bool) -> MergeReport:
    """Merge every job's branch into its base branch: all are planned (and refused together, one
    line per problem, :class:`MergeRefused`) before any is made; then, with ``push``, each base
    branch is pushed to ``origin``."""
    on_forge = [job for job in jobs if push and job.pull_request]
    jobs = [job for job in jobs if not (push and job.pull_request)]
    merged_on_forge = _merge_pull_requests(on_forge, dry_run=dry_run)
    planned: list[tuple[MergeJob, MergeOutcome]] = []
    problems: list[str] = []
    for job in jobs:
        outcome, found = plan_merge(Path(job.source), job.repo, job.branch, job.base_branch, Path(job.checkout))
        planned.append((job, outcome))
        problems += found
    if push and jobs:
        for source in dict.fromkeys(job.source for job in jobs):
            if run_git(["-C", source, "remote", "get-url", "origin"], check=False).returncode != 0:
                problems.append(f'{Path(source).name}: no remote "origin" in {source} to push to')
    if problems:
        raise MergeRefused("\n".join(dict.fromkeys(problems)))
    if dry_run:
        return MergeReport(run_id=run_id, dry_run=True, push=push,
                           repos=merged_on_forge + [_repo_merge(j, o) for j, o in planned])
    done: list[tuple[MergeJob, MergeOutcome]] = []
    for job, outcome in planned:
        if done:  # an earlier merge may have moved this base branch (two workspaces, one repo): plan again
            outcome, found = plan_merge(Path(job.source), job.repo, job.branch, job.base_branch, Path(job.checkout))
            if found:
                merged = ", ".join(f"{j.repo}@{j.workspace}" for j, _ in done)
                raise MergeRefused("\n".join([*found, f"already merged: {merged}"]))
        done.append((job, apply_merge(outcome, job.message)))
    pushed: set[tuple[str, str]] = set()
    if push:
        for job, _ in done:
            key = (job.source, job.base_branch)
            if key in pushed:
                continue
            ref = f"refs/heads/{job.base_branch}"
            run_git(["-C", job.source, "push", "--quiet", "origin", f"{ref}:{ref}"],
                    what=f'repo "{job.repo}": git push origin {job.base_branch}')
            pushed.add(key)
    return MergeReport(run_id=run_id, dry_run=False, push=push,
                       repos=merged_on_forge + [_repo_merge(j, o, (j.source, j.base_branch) in pushed)
                                                for j, o in done])


def _merge_pull_requests(jobs: Sequence[MergeJob], *, dry_run: bool) -> list[RepoMerge]:
    """Branches with an open GitHub pull request, under ``--push``: GitHub merges them (``gh pr
    merge``), then the base branch is fetched from ``origin``.  Your checkout of the base branch
    is left as it is (``git pull`` brings the merge to it).  Refused, nothing merged, when a
    workspace has uncommitted work (the pull request would miss it)."""
    problems = [f'repo "{job.repo}": workspace checkout {job.checkout} has uncommitted changes; '
                "commit them first (metawsm commit)"
                for job in jobs
                if run_git(["--no-optional-locks", "-C", job.checkout, "status", "--porcelain"],
                           check=False).stdout.strip()]
    if problems:
        raise MergeRefused("\n".join(problems))
    merged: list[RepoMerge] = []
    for job in jobs:
        before = run_git(["-C", job.source, "rev-parse", f"refs/heads/{job.base_branch}"], check=False).stdout.strip()
        after = ""
        if not dry_run:
            forge.merge_pull_request(job.repo, job.workspace, job.checkout, job.pull_request)
            run_git(["-C", job.source, "fetch", "--quiet", "origin", job.base_branch],
                    what=f'repo "{job.repo}": git fetch origin {job.base_branch}')
            after = run_git(["-C", job.source, "rev-parse", "FETCH_HEAD"]).stdout.strip()
        merged.append(RepoMerge(repo=job.repo, source=job.source, branch=job.branch, base_branch=job.base_branch,
                                how="pull_request", previous=before, commit=after, ticket=job.ticket,
                                workspace=job.workspace))
    return merged


def merge_summary(report: MergeReport) -> str:
    """One line for the run's events."""
    words = {"fast_forward": "fast-forwarded", "merge_commit": "merged", "up_to_date": "already up to date",
             "pull_request": "merged on GitHub by its pull request, fetched"}
    return "; ".join(f"{r.repo}@{r.workspace}: {r.base_branch} {words.get(r.how, r.how)} at {r.commit[:12]}"
                     + (" and pushed" if r.pushed else "") for r in report.repos) or "no repositories"


def append_changelog(checkout: Path, ticket: str, entry: str, when: str) -> str:
    """Append ``entry`` to ``ttmp/<ticket>/changelog.md`` of the doc-home checkout and commit it on
    the run's branch; returns the commit."""
    path = checkout / "ttmp" / ticket / "changelog.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else f"# Changelog of {ticket}\n"
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(f"{text}\n- {when}: {' '.join(entry.split())}\n", encoding="utf-8")
    relative = str(path.relative_to(checkout))
    run_git(["-C", str(checkout), "add", "--", relative], what=f"git add in {checkout}")
    run_git([*git_identity_args(checkout), "-C", str(checkout), "commit", "-q", "-m", f"{ticket}: changelog",
             "--", relative], what=f"git commit in {checkout}")
    return _head(checkout)


def source_of(checkout: Path) -> Path | None:
    """The repository a worktree checkout belongs to (its main working tree), if it can be told."""
    if not checkout.is_dir():
        return None
    result = run_git(["-C", str(checkout), "rev-parse", "--path-format=absolute", "--git-common-dir"], check=False)
    return Path(result.stdout.strip()).parent if result.returncode == 0 and result.stdout.strip() else None


# --------------------------------------------------------------------------- iterate


class IterateReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    dry_run: bool
    iteration: int  # this iteration's number (the next one, for a dry run)
    status: str  # the run's status afterwards
    agents: list[str]  # the agents the feedback is for
    files: list[str]  # the feedback files written (or to be written)
    threads: list[str] = []  # the forum threads the feedback was posted in


def feedback_section(iteration: int, when: str, feedback: str, agent: str) -> str:
    """One iteration's section of ``feedback.md`` (the file keeps every iteration, newest last)."""
    who = f"for agent {agent}" if agent else "for every agent"
    return f"## Iteration {iteration} ({when}, {who})\n\n{feedback.strip()}\n\n"


def exclude_metawsm(checkout: Path) -> None:
    """Make git ignore a ``.metawsm/`` folder in ``checkout`` (its repository's ``info/exclude``),
    so metawsm's own files, feedback included, are never committed."""
    found = run_git(["-C", str(checkout), "rev-parse", "--git-path", "info/exclude"], check=False).stdout.strip()
    if not found:
        return
    path = Path(found) if Path(found).is_absolute() else checkout / found
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if ".metawsm/" in text.splitlines():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + ("" if not text or text.endswith("\n") else "\n") + ".metawsm/\n", encoding="utf-8")


def head_of(checkout: Path) -> str:
    """The commit ``checkout`` is at ("" when it cannot be told)."""
    result = run_git(["-C", str(checkout), "rev-parse", "HEAD"], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""
