"""Forge providers for ``metawsm pr``: push a run's branches and (with ``github``) open pull requests.

* ``push``: push each branch to ``origin``; when ``origin`` is a known forge (GitHub, GitLab,
  Bitbucket), the URL that opens a pull request for it is recorded and printed.
* ``github``: push, then ``gh pr create`` in the repository's checkout; the new pull request is
  read back with ``gh pr view <url> --json number,url,state,isDraft``.
* ``auto``: ``github`` when ``gh`` is installed and logged in, else ``push``.

Everything here runs on the Run actor's worker thread (git, gh and the network may be slow);
the actor records the outcome (``run_pull_requests``) on its own thread.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec

from metawsm.runs.model import PullRequestRow, RunError
from metawsm.runs.providers.workspace import run_git

__all__ = [
    "GhStatus",
    "PrJob",
    "PrRefused",
    "PrReport",
    "PullRequestRow",
    "ReviewFetch",
    "ReviewItem",
    "ReviewJob",
    "ReviewSyncReport",
    "compare_url",
    "compose_body",
    "fetch_reviews",
    "gh_status",
    "open_pull_requests",
    "review_text",
    "summary",
]

GH_TIMEOUT = 120.0
PROVIDERS = ("auto", "github", "push")
_PULL_URL = re.compile(r"https?://\S+/pull/(\d+)\S*")
_REMOTE = re.compile(r"^(?:https?://(?:[^@/]+@)?|ssh://(?:[^@/]+@)?|[^@/:]+@)(?P<host>[^/:]+)(?::\d+)?[:/]"
                     r"(?P<path>.+?)(?:\.git)?/?$")


class PrRefused(RunError):
    """``metawsm pr`` cannot push or open a pull request as things stand (uncommitted work, no
    ``origin``, ``gh`` missing or logged out, ``gh pr create`` refusing): one line per problem.
    HTTP 409; the CLI exits 1 (see exit_codes.EXCEPTIONS)."""

    code = "pr_refused"
    status = 409


class PrJob(msgspec.Struct, frozen=True, kw_only=True):
    ticket: str
    workspace: str
    repo: str
    source: str
    checkout: str
    branch: str
    base_branch: str
    title: str
    body: str
    draft: bool = False
    add_diffstat: bool = True  # append the branch's diff stat to the body (not to one given by the user)
    existing_url: str = ""  # a pull request recorded earlier: push only, keep it
    labels: list[str] = []  # git_pr.default_labels (github only)
    reviewers: list[str] = []  # git_pr.default_reviewers (github only)


class PrReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    dry_run: bool
    provider: str  # the provider used: github | push
    pull_requests: list[PullRequestRow]
    skipped: list[str] = []  # "<repo> (<ticket>): <why>", e.g. nothing to push


class GhStatus(msgspec.Struct, frozen=True, kw_only=True):
    installed: bool
    logged_in: bool
    detail: str


def gh_status() -> GhStatus:
    """Whether the ``gh`` CLI is on PATH and logged in (``gh auth status``)."""
    if shutil.which("gh") is None:
        return GhStatus(installed=False, logged_in=False, detail="gh CLI not found on PATH")
    try:
        result = subprocess.run(["gh", "auth", "status"], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return GhStatus(installed=True, logged_in=False, detail=f"gh auth status failed: {error}")
    text = " ".join((result.stderr.strip() or result.stdout.strip()).split())
    return GhStatus(installed=True, logged_in=result.returncode == 0, detail=text[:300])


def choose_provider(configured: str) -> str:
    if configured == "auto":
        status = gh_status()
        return "github" if status.installed and status.logged_in else "push"
    return configured


def compare_url(remote: str, base: str, branch: str) -> str:
    """The web page that opens a pull (merge) request from ``branch`` into ``base``, when
    ``remote`` is on GitHub, GitLab or Bitbucket; else ""."""
    found = _REMOTE.match(remote.strip())
    if not found:
        return ""
    host, path = found["host"].lower(), found["path"]
    b, h = quote(base, safe="/"), quote(branch, safe="/")
    if host == "github.com":
        return f"https://github.com/{path}/compare/{b}...{h}?expand=1"
    if host == "gitlab.com":
        return (f"https://gitlab.com/{path}/-/merge_requests/new?merge_request%5Bsource_branch%5D={h}"
                f"&merge_request%5Btarget_branch%5D={b}")
    if host == "bitbucket.org":
        return f"https://bitbucket.org/{path}/pull-requests/new?source={h}&dest={b}"
    return ""


def _gh(args: Sequence[str], cwd: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["gh", *args], cwd=cwd, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=GH_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PrRefused(f"gh {' '.join(args[:2])} failed: {error}") from None


def merge_pull_request(repo: str, workspace: str, checkout: str, number: int) -> None:
    """``gh pr merge N --merge``: GitHub merges the pull request, so its required reviews and checks
    apply; a refusal names the repository and gives gh's reason."""
    merged = _gh(["pr", "merge", str(number), "--merge"], checkout)
    if merged.returncode != 0:
        detail = " ".join((merged.stderr.strip() or merged.stdout.strip()).split())
        raise PrRefused(f"{repo} ({workspace}): gh pr merge {number} failed: {detail}")


def _remote(source: str) -> str:
    result = run_git(["-C", source, "remote", "get-url", "origin"], check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def _ahead(source: str, base: str, branch: str) -> int:
    result = run_git(["-C", source, "rev-list", "--count", f"{base}..{branch}"], check=False)
    text = result.stdout.strip()
    return int(text) if result.returncode == 0 and text.isdigit() else 0


def diff_stat(source: str, base: str, branch: str) -> str:
    result = run_git(["-C", source, "diff", "--stat", f"{base}...{branch}"], check=False)
    return result.stdout.rstrip() if result.returncode == 0 else ""


def _open_with_gh(job: PrJob) -> tuple[str, int, str]:
    """``gh pr create``, then ``gh pr view --json``: (url, number, state)."""
    body = job.body
    if job.add_diffstat:
        stat = diff_stat(job.source, job.base_branch, job.branch)
        if stat:
            body = body.rstrip() + "\n\n## Changes\n\n```\n" + stat + "\n```\n"
    args = ["pr", "create", "--base", job.base_branch, "--head", job.branch, "--title", job.title, "--body", body]
    if job.draft:
        args.append("--draft")
    for label in job.labels:
        args += ["--label", label]
    for reviewer in job.reviewers:
        args += ["--reviewer", reviewer]
    created = _gh(args, job.checkout)
    if created.returncode != 0:
        detail = " ".join((created.stderr.strip() or created.stdout.strip()).split())
        raise PrRefused(f"{job.repo} ({job.workspace}): gh pr create failed: {detail}")
    urls = [m.group(0) for m in _PULL_URL.finditer(created.stdout)]
    if not urls:
        raise PrRefused(f"{job.repo} ({job.workspace}): gh pr create printed no pull request URL")
    return _view_with_gh(job, urls[-1])


def _view_with_gh(job: PrJob, url: str) -> tuple[str, int, str]:
    viewed = _gh(["pr", "view", url, "--json", "number,url,state,isDraft"], job.checkout)
    if viewed.returncode != 0:
        number = int(m.group(1)) if (m := _PULL_URL.search(url)) else 0
        return url, number, "open"
    try:
        data = json.loads(viewed.stdout)
    except ValueError:
        raise PrRefused(f"{job.repo} ({job.workspace}): gh pr view printed no JSON") from None
    state = str(data.get("state") or "open").lower()
    if state == "open" and data.get("isDraft"):
        state = "draft"
    return str(data.get("url") or url), int(data.get("number") or 0), state


def open_pull_requests(run_id: str, jobs: Sequence[PrJob], *, provider: str, dry_run: bool) -> PrReport:
    """Push every job's branch (with commits the base lacks) and, with ``github``, open its pull
    request.  Everything is checked before anything is pushed (:class:`PrRefused`)."""
    chosen = choose_provider(provider)
    problems: list[str] = []
    skipped: list[str] = []
    ready: list[PrJob] = []
    for job in jobs:
        label = f"{job.repo} ({job.workspace})"
        checkout = Path(job.checkout)
        if checkout.is_dir():
            dirty = run_git(["--no-optional-locks", "-C", job.checkout, "status", "--porcelain"], check=False)
            if dirty.stdout.strip():
                problems.append(f"{label}: uncommitted changes in {job.checkout}; commit them first (metawsm commit)")
                continue
        if _ahead(job.source, job.base_branch, job.branch) == 0:
            skipped.append(f"{job.repo} ({job.ticket}): {job.branch} has no commit that {job.base_branch} lacks")
            continue
        if not _remote(job.source):
            problems.append(f'{label}: no remote "origin" in {job.source} to push {job.branch} to')
            continue
        ready.append(job)
    if chosen == "github":
        status = gh_status()
        if not (status.installed and status.logged_in):
            problems.append(f"git_pr.provider is github but gh is not usable: {status.detail} (see metawsm auth check)")
    if problems:
        raise PrRefused("\n".join(problems))
    views: list[PullRequestRow] = []
    for job in ready:
        head = run_git(["-C", job.source, "rev-parse", f"refs/heads/{job.branch}"]).stdout.strip()
        base = PullRequestRow(ticket=job.ticket, repo=job.repo, workspace=job.workspace, provider=chosen,
                               branch=job.branch, base_branch=job.base_branch, head_commit=head)
        if dry_run:
            views.append(base)
            continue
        ref = f"refs/heads/{job.branch}"
        run_git(["-C", job.source, "push", "--quiet", "origin", f"{ref}:{ref}"],
                what=f'repo "{job.repo}": git push origin {job.branch}')
        if chosen == "push":
            url = compare_url(_remote(job.source), job.base_branch, job.branch)
            views.append(msgspec.structs.replace(base, url=url, state="pushed"))
            continue
        url, number, state = _view_with_gh(job, job.existing_url) if job.existing_url else _open_with_gh(job)
        views.append(msgspec.structs.replace(base, url=url, number=number, state=state))
    return PrReport(run_id=run_id, dry_run=dry_run, provider=chosen, pull_requests=views, skipped=skipped)


def compose_body(*, run_id: str, ticket: str, goal: str, scope: str, done_criteria: str,
                 qa: Sequence[tuple[str, str]], validations: Sequence[tuple[str, str, str]]) -> str:
    """The pull request's description: the brief, the questions answered and the validation
    signals (the worker adds the diff stat)."""
    lines = [f"Ticket {ticket}, metawsm run `{run_id}`.", ""]
    for title, text in (("Goal", goal), ("Scope", scope), ("Done criteria", done_criteria)):
        if text.strip():
            lines += [f"## {title}", "", text.strip(), ""]
    if qa:
        lines += ["## Questions and answers", ""]
        for question, answer in qa:
            lines += [f"- **Q:** {question}", f"  **A:** {answer or '(not answered)'}"]
        lines.append("")
    if validations:
        lines += ["## Validation", ""]
        lines += [f"- {agent}: {status or 'none'}" + (f" ({criteria})" if criteria else "")
                  for agent, status, criteria in validations]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"



def summary(report: PrReport) -> str:
    """One line for the run's events."""
    parts = [f"{pr.repo} ({pr.ticket}): {pr.branch} {pr.state}" + (f" {pr.url}" if pr.url else "")
             for pr in report.pull_requests]
    return f"{report.provider}: " + ("; ".join(parts) or "nothing to push")


# --------------------------------------------------------------------------- review feedback

_PULL_PATH = re.compile(r"^https?://[^/]+/(?P<owner>[^/]+)/(?P<name>[^/]+)/pull/(?P<number>\d+)")


class ReviewItem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One review or review comment of a pull request, as ``gh api`` returns it (normalised)."""

    ticket: str
    repo: str
    pr_number: int
    source_type: str  # review | comment
    source_id: str
    author: str = ""
    state: str = ""
    body: str = ""
    path: str = ""
    line: int = 0
    url: str = ""


class ReviewSyncReport(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    pull_requests: int  # how many were read
    fetched: int
    new: int  # stored now (the others were stored by an earlier sync)
    ignored: int
    queued: int  # waiting to be sent to the agents after this sync
    dispatched: int = 0  # sent to the agents now (--dispatch)
    iteration: int = 0  # the iteration that sent them
    threads: list[str] = []  # the forum threads posted in


class ReviewJob(msgspec.Struct, frozen=True, kw_only=True):
    ticket: str
    repo: str
    checkout: str
    url: str  # the pull request's URL (owner, repository and number are read from it)


class ReviewFetch(msgspec.Struct, frozen=True, kw_only=True):
    items: list[ReviewItem]
    ignored: int  # items by git_pr.review_feedback.ignore_authors, empty or pending reviews


def _json_pages(text: str) -> list[Any]:
    """``gh api --paginate`` prints one JSON array per page, back to back: every element."""
    decoder, out, index = json.JSONDecoder(), [], 0
    while index < len(text):
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            break
        page, index = decoder.raw_decode(text, index)
        out += page if isinstance(page, list) else [page]
    return out


def fetch_reviews(jobs: Sequence[ReviewJob], ignore_authors: Sequence[str]) -> ReviewFetch:
    """Reviews and review comments of each pull request (``gh api repos/O/R/pulls/N/reviews`` and
    ``.../comments``, ``--paginate``), without those of ignored authors (case-insensitive), empty
    reviews and pending ones."""
    status = gh_status()
    if not (status.installed and status.logged_in):
        raise PrRefused(f"review sync needs gh: {status.detail} (see metawsm auth check)")
    ignored_names = {name.strip().lower() for name in ignore_authors}
    items: list[ReviewItem] = []
    ignored = 0
    for job in jobs:
        found = _PULL_PATH.match(job.url)
        if not found:
            continue
        number = int(found["number"])
        api = f"repos/{found['owner']}/{found['name']}/pulls/{number}"
        for source_type, suffix in (("review", "reviews"), ("comment", "comments")):
            result = _gh(["api", f"{api}/{suffix}", "--paginate"], job.checkout)
            if result.returncode != 0:
                detail = " ".join((result.stderr.strip() or result.stdout.strip()).split())
                raise PrRefused(f"{job.repo} #{number}: gh api {api}/{suffix} failed: {detail}")
            try:
                entries = _json_pages(result.stdout)
            except ValueError:
                raise PrRefused(f"{job.repo} #{number}: gh api {api}/{suffix} printed no JSON") from None
            for entry in entries:
                if not isinstance(entry, dict):
                    continue
                author = str((entry.get("user") or {}).get("login") or "")
                body = str(entry.get("body") or "").strip()
                state = str(entry.get("state") or "").lower() if source_type == "review" else ""
                if author.lower() in ignored_names or not body or state == "pending":
                    ignored += 1
                    continue
                items.append(ReviewItem(
                    ticket=job.ticket, repo=job.repo, pr_number=number, source_type=source_type,
                    source_id=str(entry.get("id") or ""), author=author, state=state, body=body,
                    path=str(entry.get("path") or ""), line=int(entry.get("line") or entry.get("original_line") or 0),
                    url=str(entry.get("html_url") or "")))
    return ReviewFetch(items=items, ignored=ignored)


def review_text(items: Sequence[ReviewItem]) -> str:
    """Review items as a list, for the forum and for the agents."""
    lines = []
    for item in items:
        where = f" on {item.path}:{item.line}" if item.path else ""
        state = f" ({item.state})" if item.state else ""
        lines.append(f"- {item.author or 'someone'}{state}{where}: {' '.join(item.body.split())}")
    return "\n".join(lines)
