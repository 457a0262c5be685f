"""Delivery: ``metawsm commit`` (checks, then a commit on the run's branch) and ``metawsm merge``
(and ``close --merge``, ``--changelog-entry``, ``--dry-run``).

First :func:`metawsm.runs.delivery.commit` and :func:`~metawsm.runs.delivery.merge` on real git
worktrees (every check, its refusal lines, nothing committed or merged when one fails, the
agent's own commits kept, a bare repository as ``origin``), then the commands end to end: a
real ``metawsm serve``, real tmux, a script agent that commits, leaves files and a secret behind
and signals completion; ``metawsm commit`` refuses the secret, then commits; ``metawsm merge
--push`` brings the work to ``main`` and to ``origin``.  No stand-in of any kind is used here.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metawsm.clock import now_text
from metawsm.policy import PolicyError, policy_from_mapping
from metawsm.runs import store
from metawsm.runs.delivery import (
    ChecksFailed,
    CommitJob,
    CommitReport,
    CommitSettings,
    MergeJob,
    MergeRefused,
    append_changelog,
    commit,
    default_message,
    forbidden_matches,
    merge,
)
from metawsm.runs.forge import compare_url, compose_body
from metawsm.runs.gates import close_blockers
from metawsm.runs.model import BriefRequest, RunRequest
from metawsm.runs.planner import plan_run
from metawsm.runs.providers.workspace import WorkspaceError
from metawsm.runs.snapshot import control_rows
from metawsm.store import Database, write_transaction
from metawsm.waiting import wait_until
from support.agents import (
    BRIEF,
    BRIEF_FLAGS,
    DONE,
    LONG_AGENT,
    RunsEnv,
    find_node,
    git,
    hermetic_git,
    make_repo,
    path_without_metawsm,
)

DEFAULT_PATTERNS = [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa", "id_ed25519"]


def settings(**changes: Any) -> CommitSettings:
    values: dict[str, Any] = {"required_checks": ["tests", "forbidden_files", "ticket_workflow", "clean_tree"],
                                 "require_all": True, "test_commands": [],
                                 "forbidden_file_patterns": DEFAULT_PATTERNS}
    values.update(changes)
    return CommitSettings(**values)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CommitJob:
    """A source repo and a worktree of it on the run's branch, with one commit of the agent's."""
    hermetic_git(tmp_path, monkeypatch)
    source = make_repo(tmp_path / "app")
    dest = tmp_path / "ws" / "app"
    git(source, "worktree", "add", "-q", "-b", "task/t-1-abc", str(dest), "main")
    (dest / "agent.txt").write_text("the agent's own commit\n")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "agent: own work")
    return CommitJob(ticket="T-1", workspace="t-1-abc", repo="app", path=str(dest), branch="task/t-1-abc",
                     base_branch="main", message="T-1: ship it")


def run_commit(job: CommitJob, tmp_path: Path, dry_run: bool = False, **changes: Any) -> CommitReport:
    return commit("run-1", [job], settings(**changes), message=job.message, log_path=tmp_path / "run.log",
                  dry_run=dry_run)


def head(job: CommitJob) -> str:
    return git(Path(job.path), "rev-parse", "HEAD")


@pytest.mark.parametrize(("path", "pattern"), [
    (".env", ".env"), ("config/.env", ".env"), (".env.local", ".env.*"), ("certs/server.pem", "*.pem"),
    ("id_rsa", "id_rsa"), ("secrets/token.txt", "secrets/"), ("src/app.py", None), ("environment.md", None),
])
def test_forbidden_patterns_match_the_path_its_name_or_a_directory(path: str, pattern: str | None) -> None:
    assert forbidden_matches(path, [*DEFAULT_PATTERNS, "secrets/"]) == pattern


def test_default_message_is_the_ticket_and_the_first_line_of_the_goal() -> None:
    assert default_message("T-1", "\n  Add a greeting\nmore", "run-1") == "T-1: Add a greeting"
    assert default_message("T-1", "", "run-1") == "T-1: apply run run-1 updates"
    assert len(default_message("T-1", "x" * 200, "run-1")) == len("T-1: ") + 72


def test_commit_keeps_the_agents_commits_and_adds_one(checkout: CommitJob, tmp_path: Path) -> None:
    before = head(checkout)
    (Path(checkout.path) / "feature.txt").write_text("new\n")
    report = run_commit(checkout, tmp_path)
    [repo] = report.repos
    assert (repo.status, repo.files, repo.ahead) == ("committed", ["feature.txt"], 2)
    assert repo.commit == head(checkout) != before
    assert git(Path(checkout.path), "log", "--format=%s", "main..HEAD").splitlines() == ["T-1: ship it",
                                                                                         "agent: own work"]
    assert git(Path(checkout.path), "status", "--porcelain") == ""
    assert [(c.name, c.status) for c in repo.checks] == [("tests", "skipped"), ("forbidden_files", "passed"),
                                                         ("ticket_workflow", "skipped"), ("clean_tree", "passed")]


def test_a_clean_checkout_commits_nothing(checkout: CommitJob, tmp_path: Path) -> None:
    [repo] = run_commit(checkout, tmp_path).repos
    assert (repo.status, repo.ahead, repo.checks, repo.commit) == ("clean", 1, [], head(checkout))


def test_forbidden_files_refuse_one_line_each_and_commit_nothing(checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / "feature.txt").write_text("new\n")
    (work / ".env").write_text("SECRET=1\n")
    (work / "keys").mkdir()
    (work / "keys" / "server.pem").write_text("-----\n")
    before = head(checkout)
    with pytest.raises(ChecksFailed) as refused:
        run_commit(checkout, tmp_path)
    assert refused.value.status == 409 and refused.value.code == "commit_checks_failed"
    assert refused.value.exit_code == 1
    assert str(refused.value).splitlines() == ['app (t-1-abc): forbidden file .env (pattern ".env")',
                                               'app (t-1-abc): forbidden file keys/server.pem (pattern "*.pem")']
    assert head(checkout) == before and ".env" in git(work, "status", "--porcelain")  # nothing committed


def test_a_forbidden_file_the_agent_committed_is_refused_too(checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / "id_rsa").write_text("key\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "agent: oops")
    (work / "feature.txt").write_text("new\n")
    with pytest.raises(ChecksFailed, match=r'forbidden file id_rsa \(pattern "id_rsa"\), committed on task/t-1-abc$'):
        run_commit(checkout, tmp_path)


def test_removing_a_forbidden_file_is_fine(checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / ".env").write_text("x\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "agent: oops")
    git(work, "rm", "-q", ".env")
    with pytest.raises(ChecksFailed, match="committed on"):  # still in the branch's history: refused
        run_commit(checkout, tmp_path)
    git(work, "commit", "-q", "-m", "agent: remove it")
    (work / "feature.txt").write_text("new\n")
    assert run_commit(checkout, tmp_path).repos[0].status == "committed"  # gone from the branch's diff


def test_test_commands_run_in_the_checkout_and_their_output_is_kept(checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / "feature.txt").write_text("new\n")
    with pytest.raises(ChecksFailed) as refused:
        run_commit(checkout, tmp_path, test_commands=["echo checking in $PWD", "echo broken >&2; exit 3", "echo never"])
    log = tmp_path / "run.log"
    assert str(refused.value) == (f'app (t-1-abc): test command "echo broken >&2; exit 3" failed with exit status 3 '
                                  f"(output in {log})")
    text = log.read_text()
    assert f"checking in {work}" in text and "broken" in text and "never" not in text.replace("echo never", "")
    assert "feature.txt" in git(work, "status", "--porcelain")
    report = run_commit(checkout, tmp_path, test_commands=["test -f feature.txt"])
    assert report.repos[0].status == "committed"
    assert ("tests", "passed") in [(c.name, c.status) for c in report.repos[0].checks]


def test_clean_tree_refuses_what_the_tests_left_behind_and_a_checkout_off_the_branch(
        checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / "feature.txt").write_text("new\n")
    with pytest.raises(ChecksFailed, match=r"the test commands changed the working tree \(build.out\)"):
        run_commit(checkout, tmp_path, test_commands=["echo x > build.out"])
    (work / "build.out").unlink()
    git(work, "switch", "-q", "-c", "elsewhere")
    with pytest.raises(ChecksFailed, match="HEAD is on elsewhere, not on the run's branch task/t-1-abc"):
        run_commit(checkout, tmp_path)
    # Without clean_tree in the required checks, only the others count.
    assert run_commit(checkout, tmp_path, required_checks=["forbidden_files"]).repos[0].status == "committed"


def test_require_all_false_needs_one_passing_check(checkout: CommitJob, tmp_path: Path) -> None:
    (Path(checkout.path) / ".env").write_text("x\n")
    with pytest.raises(ChecksFailed):
        run_commit(checkout, tmp_path, required_checks=["forbidden_files", "clean_tree"])
    report = run_commit(checkout, tmp_path, required_checks=["forbidden_files", "clean_tree"], require_all=False)
    assert report.repos[0].status == "committed"


def test_dry_run_checks_without_running_tests_and_commits_nothing(checkout: CommitJob, tmp_path: Path) -> None:
    work = Path(checkout.path)
    (work / "feature.txt").write_text("new\n")
    before = head(checkout)
    report = run_commit(checkout, tmp_path, dry_run=True, test_commands=["exit 1"])
    [repo] = report.repos
    assert (report.dry_run, repo.status, repo.files, repo.commit) == (True, "would_commit", ["feature.txt"], before)
    assert not (tmp_path / "run.log").exists() and head(checkout) == before
    (work / ".env").write_text("x\n")
    with pytest.raises(ChecksFailed, match="forbidden file .env"):
        run_commit(checkout, tmp_path, dry_run=True)


def test_a_missing_checkout_is_a_workspace_error(checkout: CommitJob, tmp_path: Path) -> None:
    gone = CommitJob(**{**{f: getattr(checkout, f) for f in checkout.__struct_fields__}, "path": str(tmp_path / "x")})
    with pytest.raises(WorkspaceError, match="does not exist"):
        run_commit(gone, tmp_path)


# -- merge ------------------------------------------------------------------------------------------


def merge_job(job: CommitJob, source: Path) -> MergeJob:
    return MergeJob(ticket=job.ticket, workspace=job.workspace, repo=job.repo, source=str(source),
                    checkout=job.path, branch=job.branch, base_branch=job.base_branch, message="Merge T-1")


def with_origin(source: Path) -> Path:
    origin = source.parent / "origin.git"
    git(source.parent, "init", "-q", "--bare", str(origin))
    git(source, "remote", "add", "origin", str(origin))
    git(source, "push", "-q", "origin", "main")
    return origin


def test_merge_fast_forwards_the_checked_out_base_and_pushes(checkout: CommitJob, tmp_path: Path) -> None:
    source = tmp_path / "app"
    origin = with_origin(source)
    dry = merge("run-1", [merge_job(checkout, source)], push=True, dry_run=True)
    [planned] = dry.repos
    assert (planned.how, planned.checkout, planned.pushed) == ("fast_forward", str(source), False)
    assert git(source, "rev-parse", "main") == planned.previous  # a dry run changes nothing
    report = merge("run-1", [merge_job(checkout, source)], push=True, dry_run=False)
    [done] = report.repos
    assert (done.how, done.commit, done.pushed) == ("fast_forward", head(checkout), True)
    assert (source / "agent.txt").is_file() and git(source, "status", "--porcelain") == ""  # as `git merge` would
    assert git(origin, "rev-parse", "main") == head(checkout)
    again = merge("run-1", [merge_job(checkout, source)], push=False, dry_run=False)
    assert again.repos[0].how == "up_to_date"


def test_merge_refuses_every_problem_at_once_and_merges_nothing(checkout: CommitJob, tmp_path: Path) -> None:
    source = tmp_path / "app"
    (source / "README.md").write_text("the user's edit\n")  # local change in the base's checkout
    (Path(checkout.path) / "wip.txt").write_text("not committed\n")  # uncommitted work in the workspace
    before = git(source, "rev-parse", "main")
    with pytest.raises(MergeRefused) as refused:
        merge("run-1", [merge_job(checkout, source)], push=True, dry_run=False)
    assert refused.value.status == 409 and refused.value.exit_code == 1
    assert str(refused.value).splitlines() == [
        f'repo "app": workspace checkout {checkout.path} has uncommitted changes (wip.txt); commit them before '
        "merging (metawsm commit)",
        f'repo "app": main is checked out in {source} with local changes (README.md); commit or stash them there, '
        "then merge again",
        f'app: no remote "origin" in {source} to push to',
    ]
    assert git(source, "rev-parse", "main") == before


def test_merge_makes_a_merge_commit_when_the_base_moved_and_refuses_a_conflict(
        checkout: CommitJob, tmp_path: Path) -> None:
    source = tmp_path / "app"
    (source / "other.txt").write_text("base moved\n")
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "base moves")
    report = merge("run-1", [merge_job(checkout, source)], push=False, dry_run=False)
    [done] = report.repos
    assert done.how == "merge_commit" and git(source, "log", "-1", "--format=%s") == "Merge T-1"
    assert git(source, "rev-list", "--parents", "-n", "1", "HEAD").split()[2] == head(checkout)
    # Both sides change README.md: refused, naming the file; nothing moves.
    (Path(checkout.path) / "README.md").write_text("workspace\n")
    git(Path(checkout.path), "commit", "-q", "-am", "agent: readme")
    (source / "README.md").write_text("base\n")
    git(source, "commit", "-q", "-am", "user: readme")
    before = git(source, "rev-parse", "main")
    with pytest.raises(MergeRefused, match="main has moved since task/t-1-abc was made and the two conflict in "
                                           "README.md"):
        merge("run-1", [merge_job(checkout, source)], push=False, dry_run=False)
    assert git(source, "rev-parse", "main") == before and git(source, "status", "--porcelain") == ""


def test_changelog_entries_are_appended_and_committed(checkout: CommitJob) -> None:
    work = Path(checkout.path)
    first = append_changelog(work, "T-1", "Shipped  the\nfeature", "2026-12-01")
    append_changelog(work, "T-1", "Fixed a typo", "2026-12-02")
    text = (work / "ttmp" / "T-1" / "changelog.md").read_text()
    assert text == "# Changelog of T-1\n\n- 2026-12-01: Shipped the feature\n\n- 2026-12-02: Fixed a typo\n"
    assert git(work, "log", "-1", "--format=%s", first) == "T-1: changelog" and git(work, "status", "--porcelain") == ""


# -- end to end ------------------------------------------------------------------------------------

# Commits once, then leaves a feature file and a secret uncommitted, and finishes; then waits for
# feedback (metawsm iterate writes it next to its run file), acts on it and finishes again.
LEAVES_WORK_AGENT = """
commit notes.txt "agent work" "agent: own commit"
printf 'feature\\n' > feature.txt
printf 'SECRET=1\\n' > .env
signal --type completion --summary "feature written"
signal --type validation --status passed --done-criteria "{done}"
say "finished"
feedback="$(dirname "$METAWSM_RUN_FILE")/feedback.md"
while [ ! -f "$feedback" ]; do sleep 0.1; done
say "got feedback: $(grep -v '^#' "$feedback" | grep . | tail -n 1)"
printf 'hello\\n' >> feature.txt
signal --type completion --summary "feedback applied"
signal --type validation --status passed --done-criteria "{done}"
say "finished again"
exec sleep 600
"""


def transitions(env: RunsEnv, run_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(env.serve.db_path) as conn:
        rows = conn.execute("SELECT from_status, to_status FROM events WHERE run_id = ? AND kind = 'transition'"
                            " ORDER BY id", (run_id,)).fetchall()
    return [(a, b) for a, b in rows]


def events(env: RunsEnv, run_id: str, kind: str) -> list[str]:
    with sqlite3.connect(env.serve.db_path) as conn:
        rows = conn.execute("SELECT message FROM events WHERE run_id = ? AND kind = ? ORDER BY id",
                            (run_id, kind)).fetchall()
    return [row[0] for row in rows]


def test_from_run_to_merged_change(runs_env: Callable[..., RunsEnv]) -> None:
    """bootstrap -> the agent writes files -> completion + validation -> commit (a forbidden file
    refused first) -> iterate (back to running, feedback in the forum and in the pane) -> the
    agent finishes again -> commit -> merge --push (main and origin have the work) -> close."""
    env = runs_env(agent=LEAVES_WORK_AGENT, done=DONE,
                   policy={"git_pr": {"test_commands": ["echo testing in $PWD", "test -f feature.txt"]}})
    started = env.cli("bootstrap", "--ticket", "T-1", "--repos", env.repo_name, *BRIEF_FLAGS, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["run"]
    run_id, [agent] = run["run_id"], run["agents"]
    work, branch = Path(agent["workspace_path"]), f"task/{agent['workspace']}"
    env.wait_status(run_id, "completed", timeout=30)

    # status: the docs were seeded (doc_sync_states), the diff shows what is left, and Next says
    # what to do about it; the same in the text output.
    snap = env.snapshot(run_id)
    [sync] = snap["docs"]["sync"]
    assert (sync["ticket"], sync["workspace"], sync["status"]) == ("T-1", agent["workspace"], "synced")
    assert len(sync["revision"]) == 40
    [diff] = snap["diffs"]
    assert (diff["repo"], diff["changed"], sorted(diff["changed_files"]), diff["ahead"]) == (
        "app", 2, [".env", "feature.txt"], 2)
    assert snap["next"] == "metawsm commit --ticket T-1"
    text = env.cli("status", "--ticket", "T-1").stdout
    assert "next: metawsm commit --ticket T-1" in text and "2 uncommitted file(s), 2 commit(s) ahead of main" in text
    assert f"T-1 in {agent['workspace']}: synced at {sync['revision'][:12]}" in text

    # The secret is refused, one line per problem, exit 1; nothing is committed.
    before = git(work, "rev-parse", "HEAD")
    refused = env.cli("commit", "--ticket", "T-1")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines() == [f'error: app ({agent["workspace"]}): forbidden file .env (pattern ".env")']
    assert git(work, "rev-parse", "HEAD") == before
    step = next(s for s in env.snapshot(run_id)["steps"] if s["name"] == "commit")
    assert step["status"] == "failed" and "forbidden file .env" in step["error"]
    assert len(events(env, run_id, "commit_refused")) == 1

    # A dry run says what would be committed; the API answers the same report.
    dry = env.api("POST", f"/api/v1/runs/{run_id}/commit", {"dry_run": True, "message": "x"})
    assert dry.status == 409 and dry.data["error"]["code"] == "commit_checks_failed"
    (work / ".env").unlink()
    dry = env.api("POST", f"/api/v1/runs/{run_id}/commit", {"dry_run": True})
    assert dry.status == 200, dry
    assert [(r["status"], r["files"]) for r in dry.data["commit"]["repos"]] == [("would_commit", ["feature.txt"])]

    # Now it commits on the run's branch, on top of the agent's own commit; the tests ran in the checkout.
    done = env.cli("commit", "--ticket", "T-1", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["commit"]
    [repo] = report["repos"]
    assert (repo["status"], repo["branch"], repo["files"]) == ("committed", branch, ["feature.txt"])
    assert git(env.repo, "rev-parse", branch) == repo["commit"]
    subjects = git(env.repo, "log", "--format=%s", f"main..{branch}").splitlines()
    assert subjects[0] == "T-1: Ship the feature" and "agent: own commit" in subjects
    assert f"testing in {work}" in Path(report["log_path"]).read_text()
    assert git(work, "status", "--porcelain") == ""
    step = next(s for s in env.snapshot(run_id)["steps"] if s["name"] == "commit")
    assert (step["status"], step.get("error", "")) == ("done", "")
    assert f"committed {repo['commit'][:12]}" in events(env, run_id, "commit")[0]
    assert env.snapshot(run_id)["status"] == "completed"

    # Nothing left: the text output says so.
    again = env.cli("commit", "--run-id", run_id)
    assert again.returncode == 0, again.stderr
    assert f"app (T-1): nothing to commit on {branch}, 3 commit(s) ahead of main" in again.stdout
    assert env.snapshot(run_id)["next"] == "metawsm pr --ticket T-1"

    # pr with the push provider: the branch is on origin, recorded, shown by status and the API.
    origin = with_origin(env.repo)
    pushed = env.cli("pr", "--ticket", "T-1")
    assert pushed.returncode == 0, pushed.stderr
    assert f"app (T-1): {branch} pushed" in pushed.stdout
    assert git(origin, "rev-parse", branch) == repo["commit"]
    [row] = env.snapshot(run_id)["pull_requests"]
    assert (row["provider"], row["branch"], row["state"], row["head_commit"]) == ("push", branch, "pushed",
                                                                                 repo["commit"])
    assert f"{branch}" in env.cli("status", "--run-id", run_id).stdout
    assert env.snapshot(run_id)["next"] == "metawsm merge --ticket T-1"

    # Iterate: the run goes back to running; the feedback is in the forum, in the workspace's
    # feedback file (never committed) and typed into the agent's pane; the agent acts on it and
    # finishes again; signals from before the feedback no longer count.
    iterated = env.cli("iterate", "--ticket", "T-1", "--feedback", "Also say hello in feature.txt", "--json")
    assert iterated.returncode == 0, iterated.stderr
    it = json.loads(iterated.stdout)["iterate"]
    assert (it["iteration"], it["status"], it["agents"]) == (1, "running", ["agent"])
    assert "Also say hello in feature.txt" in Path(it["files"][0]).read_text()
    assert ("completed", "running") in transitions(env, run_id)
    env.wait_pane_output(agent["session"], "New feedback from the operator (iteration 1)")
    env.wait_pane_output(agent["session"], "got feedback: Also say hello in feature.txt")

    def feedback_thread() -> dict[str, Any] | None:
        threads = env.api("GET", f"/api/v1/forum/threads?run_id={run_id}").data["threads"]
        return next((t for t in threads if t["thread_id"] == it["threads"][0]), None)

    thread = wait_until(feedback_thread, timeout=20, message="the feedback thread in the forum")
    assert thread["title"] == f"Feedback, iteration 1 of run {run_id}"
    env.wait_status(run_id, "completed", timeout=30)
    assert ".metawsm/" in (env.repo / ".git" / "info" / "exclude").read_text().splitlines()
    done = env.cli("commit", "--ticket", "T-1", "--json")
    assert done.returncode == 0, done.stderr
    [repo] = json.loads(done.stdout)["commit"]["repos"]
    assert (repo["status"], repo["files"], repo["ahead"]) == ("committed", ["feature.txt"], 4)

    # Merge: refused while the user's checkout of main has local changes, naming them; then a
    # fast-forward of main, in the user's checkout as `git merge` would, pushed to origin.
    (env.repo / "README.md").write_text("the user's edit\n")
    refused = env.cli("merge", "--ticket", "T-1", "--push")
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.splitlines() == [f'error: repo "app": main is checked out in {env.repo} with local '
                                           "changes (README.md); commit or stash them there, then merge again"]
    git(env.repo, "checkout", "--", "README.md")
    dry = env.cli("merge", "--ticket", "T-1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"app (T-1): main would fast-forward at {repo['commit'][:12]}, checkout {env.repo} would be updated" \
        in dry.stdout
    assert git(env.repo, "rev-parse", "main") != repo["commit"]
    merged = env.cli("merge", "--ticket", "T-1", "--push", "--json")
    assert merged.returncode == 0, merged.stderr
    [result] = json.loads(merged.stdout)["merge"]["repos"]
    assert (result["how"], result["commit"], result["pushed"]) == ("fast_forward", repo["commit"], True)
    assert (env.repo / "feature.txt").read_text() == "feature\nhello\n"
    assert git(env.repo, "status", "--porcelain") == ""
    assert git(origin, "rev-parse", "main") == repo["commit"]
    assert "fast-forwarded" in events(env, run_id, "merge")[0]
    assert env.snapshot(run_id)["next"] == "metawsm close --ticket T-1"

    # close --dry-run checks the gates and changes nothing; close --merge --changelog-entry
    # commits the entry on the branch, merges it into main, and closes.
    dry_close = env.cli("close", "--run-id", run_id, "--merge", "--dry-run", "--changelog-entry", "Shipped")
    assert dry_close.returncode == 0, dry_close.stderr
    assert "nothing changed" in dry_close.stdout and env.snapshot(run_id)["status"] == "completed"
    closed = env.cli("close", "--run-id", run_id, "--merge", "--changelog-entry", "Shipped the feature")
    assert closed.returncode == 0, closed.stderr
    assert env.snapshot(run_id)["status"] == "closed"
    assert "Shipped the feature" in (env.repo / "ttmp" / "T-1" / "changelog.md").read_text()
    assert git(env.repo, "log", "-1", "--format=%s", "main") == "T-1: changelog"  # fast-forwarded again


def test_commit_is_refused_while_the_agents_work(runs_env: Callable[..., RunsEnv]) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run()
    env.wait_status(run["run_id"], "running")
    refused = env.cli("commit", "--run-id", run["run_id"])
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"error: run {run['run_id']} is running; commit once it is completed or "
                                      "stopped (its agents may still be changing the files)")
    assert env.act(run["run_id"], "stop").status == 200  # the run still takes its other commands


# -- iterate: signals from before the feedback no longer count --------------------------------------


def _control_event(conn: sqlite3.Connection, run_id: str, control_type: str, **fields: str) -> None:
    sequence = conn.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM forum_events").fetchone()[0]
    payload = {"control_type": control_type, "payload": {"run_id": run_id, "agent_name": "agent", **fields},
               "post_id": f"p{sequence}", "body": control_type}
    with write_transaction(conn):
        conn.execute("INSERT INTO forum_events (sequence, event_id, event_type, occurred_at, run_id, ticket,"
                     " agent_name, actor_type, payload_json) VALUES (?, ?, 'forum.control.signal', ?, ?, 'T-1',"
                     " 'agent', 'agent', ?)", (sequence, f"e{sequence}", now_text(), run_id, json.dumps(payload)))


def test_after_an_iteration_only_later_signals_count_for_the_gates(tmp_path: Path) -> None:
    db = Database(tmp_path / "runs.db")
    db.migrate()
    conn = db.connect()
    plan = plan_run(RunRequest(mode="bootstrap", tickets=["T-1"], repos=["app"], brief=BriefRequest(**BRIEF)),
                    policy_from_mapping({}), policy_path="", server_url="http://x", base_dir=Path("/nowhere"))
    run_id = plan.spec.run_id
    with write_transaction(conn):
        store.insert_run(conn, plan.spec, plan.steps, [(s.agent, s.workspace, s.session, s.workspace_path)
                                                      for s in plan.slots], plan.brief)
        conn.execute("INSERT INTO forum_control_state (run_id, agent_name, ticket, last_event_sequence,"
                     " completion_signalled, validation_status, validation_done_criteria)"
                     " VALUES (?, 'agent', 'T-1', 2, 1, 'passed', ?)", (run_id, DONE))
    _control_event(conn, run_id, "completion", summary="first")
    _control_event(conn, run_id, "validation", status="passed", done_criteria=DONE)
    assert close_blockers(conn, run_id, lambda ws, repo: []) == []

    assert store.record_iteration(conn, run_id, "", "more please") == (1, 2)
    control = control_rows(conn, run_id)["agent"]
    assert (control.completed, control.validation_status) == (False, "")
    [blocker] = close_blockers(conn, run_id, lambda ws, repo: [])
    assert blocker.endswith("missing forum completion signal; close blocked")
    _control_event(conn, run_id, "completion", summary="second")
    _control_event(conn, run_id, "validation", status="passed", done_criteria=DONE)
    control = control_rows(conn, run_id)["agent"]
    assert (control.completed, control.summary, control.validation_status) == (True, "second", "passed")
    assert close_blockers(conn, run_id, lambda ws, repo: []) == []
    # An iteration for another agent leaves this one's signals alone.
    store.record_iteration(conn, run_id, "reviewer", "you too")
    assert control_rows(conn, run_id)["agent"].completed
    conn.close()


def test_iterate_refusals_dry_run_and_a_stopped_run(runs_env: Callable[..., RunsEnv]) -> None:
    env = runs_env(agent=LONG_AGENT)
    run = env.start_run()
    run_id, session = run["run_id"], run["agents"][0]["session"]
    env.wait_status(run_id, "running")
    assert env.cli("iterate", "--run-id", run_id).stderr.strip() == "error: --feedback is required"
    empty = env.act(run_id, "iterate", feedback="  ")
    assert (empty.status, empty.data["error"]["message"]) == (400, "feedback cannot be empty (--feedback)")
    unknown = env.act(run_id, "iterate", feedback="x", agent="nobody")
    assert (unknown.status, unknown.data["error"]["message"]) == (400, f'run {run_id} has no agent "nobody"; '
                                                                        "its agents: agent")
    dry = env.cli("iterate", "--run-id", run_id, "--feedback", "try again", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "iteration 1 (dry run): nothing changed" in dry.stdout
    assert not Path(env.workspace_root / run["agents"][0]["workspace"] / ".metawsm" / "feedback.md").exists()

    # A stopped run gets its sessions back, then the feedback in the pane.
    assert env.act(run_id, "stop").status == 200
    assert session not in env.sessions()
    result = env.act(run_id, "iterate", feedback="start over, smaller")
    assert result.status == 200, result
    assert (result.data["iterate"]["iteration"], result.data["iterate"]["status"]) == (1, "running")
    assert env.snapshot(run_id)["status"] == "running" and session in env.sessions()
    env.wait_pane_output(session, "New feedback from the operator (iteration 1)")
    step = next(s for s in env.snapshot(run_id)["steps"] if s["name"] == "iterate")
    assert step["status"] == "done"


# -- pr: forges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("remote", "url"), [
    ("git@github.com:acme/app.git", "https://github.com/acme/app/compare/main...task/t-1?expand=1"),
    ("https://github.com/acme/app", "https://github.com/acme/app/compare/main...task/t-1?expand=1"),
    ("ssh://git@gitlab.com/group/sub/app.git",
     "https://gitlab.com/group/sub/app/-/merge_requests/new?merge_request%5Bsource_branch%5D=task/t-1"
     "&merge_request%5Btarget_branch%5D=main"),
    ("https://user@bitbucket.org/acme/app.git", "https://bitbucket.org/acme/app/pull-requests/new?source=task/t-1&dest=main"),
    ("/srv/git/app.git", ""),
    ("https://git.example.com/acme/app.git", ""),
])
def test_the_compare_url_of_known_forges(remote: str, url: str) -> None:
    assert compare_url(remote, "main", "task/t-1") == url


def test_the_pull_request_body_has_the_brief_the_answers_and_the_validation() -> None:
    body = compose_body(run_id="run-1", ticket="T-1", goal="Ship it", scope="app only", done_criteria=DONE,
                        qa=[("Which DB?", "SQLite"), ("Colour?", "")], validations=[("agent", "passed", DONE)])
    assert body == ("Ticket T-1, metawsm run `run-1`.\n\n## Goal\n\nShip it\n\n## Scope\n\napp only\n\n"
                    f"## Done criteria\n\n{DONE}\n\n## Questions and answers\n\n- **Q:** Which DB?\n  **A:** SQLite\n"
                    "- **Q:** Colour?\n  **A:** (not answered)\n\n## Validation\n\n"
                    f"- agent: passed ({DONE})\n")


def test_git_pr_provider_is_validated() -> None:
    assert policy_from_mapping({"git_pr": {"provider": "push"}}).git_pr.provider == "push"
    with pytest.raises(PolicyError, match="^git_pr.provider must be auto|github|push$"):
        policy_from_mapping({"git_pr": {"provider": "gitea"}})


# The stand-in for the GitHub CLI: the only stand-in of this tests (there is no forge to
# reach here).  It records each call's arguments and directory, and answers as gh documents it:
# `gh pr create` prints the new pull request's URL, `gh pr view --json number,url,state,isDraft`
# prints that JSON object, `gh pr merge N --merge` exits 0, `gh auth status` exits 0 when logged in, and `gh api
# repos/O/R/pulls/N/reviews|comments --paginate` prints the REST API's arrays (one per page).
GH_STAND_IN = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GH_RECORD"], "a") as record:
    record.write(json.dumps({{"args": args, "cwd": os.getcwd()}}) + "\\n")
if args[:2] == ["auth", "status"]:
    print("github.com\\n  Logged in to github.com account octo (keyring)", file=sys.stderr)
    sys.exit(0)
if args[:2] == ["pr", "create"]:
    print("Creating pull request for task/x into main in acme/app\\n")
    print("https://github.com/acme/app/pull/7")
    sys.exit(0)
if args[:2] == ["pr", "merge"]:
    print("Merged pull request acme/app#7")
    sys.exit(0)
if args[:2] == ["pr", "view"]:
    print(json.dumps({{"isDraft": False, "number": 7, "state": "OPEN", "url": "https://github.com/acme/app/pull/7"}}))
    sys.exit(0)
if args[:2] == ["api", "repos/acme/app/pulls/7/reviews"]:
    print(json.dumps([
        {{"id": 11, "user": {{"login": "carol"}}, "body": "Please add a test.", "state": "CHANGES_REQUESTED",
          "html_url": "https://github.com/acme/app/pull/7#pullrequestreview-11"}},
        {{"id": 12, "user": {{"login": "carol"}}, "body": "", "state": "APPROVED", "html_url": ""}}]))
    print(json.dumps([{{"id": 13, "user": {{"login": "dave"}}, "body": "draft", "state": "PENDING", "html_url": ""}}]))
    sys.exit(0)
if args[:2] == ["api", "repos/acme/app/pulls/7/comments"]:
    print(json.dumps([
        {{"id": 21, "user": {{"login": "dave"}}, "body": "Typo here.", "path": "feature.txt", "line": 1,
          "html_url": "https://github.com/acme/app/pull/7#discussion_r21"}},
        {{"id": 22, "user": {{"login": "CI-Bot"}}, "body": "coverage 80%", "path": "feature.txt", "line": 1,
          "html_url": ""}}]))
    sys.exit(0)
sys.exit(f"unexpected gh call: {{args}}")
"""


def test_the_github_provider_opens_pull_requests_and_syncs_their_reviews(
        runs_env: Callable[..., RunsEnv], tmp_path: Path) -> None:
    """The github provider (pr, review sync --dispatch, auth check) against a stand-in `gh` on the
    daemon's PATH: the only stand-in in these tests, as no forge is reachable here.  It records its
    arguments and prints gh's documented output; pushing is real, to a bare repository as origin."""
    bin_dir = tmp_path / "gh-bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH_STAND_IN.format(python=sys.executable))
    (bin_dir / "gh").chmod(0o755)
    record = tmp_path / "gh-calls.jsonl"
    env = runs_env(agent=LEAVES_WORK_AGENT, done=DONE,
                   policy={"git_pr": {"provider": "github", "default_labels": ["metawsm"],
                                      "default_reviewers": ["octo"],
                                      "review_feedback": {"ignore_authors": ["ci-bot"]}}},
                   serve_env={"PATH": f"{bin_dir}{os.pathsep}{path_without_metawsm()}", "GH_RECORD": str(record)})
    origin = with_origin(env.repo)
    run = env.start_run(mode="bootstrap")
    run_id, [agent] = run["run_id"], run["agents"]
    env.wait_status(run_id, "completed", timeout=30)
    (Path(agent["workspace_path"]) / ".env").unlink()
    assert env.cli("commit", "--run-id", run_id).returncode == 0

    opened = env.cli("pr", "--run-id", run_id, "--json")
    assert opened.returncode == 0, opened.stderr
    report = json.loads(opened.stdout)["pr"]
    assert report["provider"] == "github"
    [row] = report["pull_requests"]
    assert (row["url"], row["number"], row["state"]) == ("https://github.com/acme/app/pull/7", 7, "open")
    branch = f"task/{agent['workspace']}"
    assert git(origin, "rev-parse", branch) == row["head_commit"]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["args"][:2] for c in calls] == [["auth", "status"], ["pr", "create"], ["pr", "view"]]
    create = calls[1]["args"]
    assert create[2:8] == ["--base", "main", "--head", branch, "--title", "[T-1] Ship the feature"]
    body = create[create.index("--body") + 1]
    assert "## Goal\n\nShip the feature" in body and f"- agent: passed ({DONE})" in body
    assert "## Changes" in body and "feature.txt" in body
    assert create[-4:] == ["--label", "metawsm", "--reviewer", "octo"]  # git_pr.default_labels/_reviewers
    assert calls[1]["cwd"] == agent["workspace_path"]
    assert calls[2]["args"][2:] == ["https://github.com/acme/app/pull/7", "--json", "number,url,state,isDraft"]
    assert env.snapshot(run_id)["pull_requests"][0]["number"] == 7

    # Again: the pull request exists; the branch is pushed again and the PR read back, not created.
    assert env.cli("pr", "--run-id", run_id).returncode == 0
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    assert [c["args"][:2] for c in calls[3:]] == [["auth", "status"], ["pr", "view"]]

    # merge --push with an open pull request: GitHub merges it (gh pr merge, from the workspace),
    # then the base branch is fetched from origin; the pull request is recorded as merged.
    merged = env.cli("merge", "--run-id", run_id, "--push", "--json")
    assert merged.returncode == 0, merged.stderr
    [result] = json.loads(merged.stdout)["merge"]["repos"]
    assert (result["how"], result["commit"]) == ("pull_request", git(origin, "rev-parse", "main"))
    last = json.loads(record.read_text().splitlines()[-1])
    assert (last["args"], last["cwd"]) == (["pr", "merge", "7", "--merge"], agent["workspace_path"])
    assert env.snapshot(run_id)["pull_requests"][0]["state"] == "merged"

    # review sync: each review and comment stored once and posted in a forum thread of the pull
    # request (ignored author, empty and pending reviews skipped); --dispatch sends them to the agent.
    synced = env.cli("review", "sync", "--run-id", run_id, "--json")
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)["review_sync"]
    assert (report["pull_requests"], report["fetched"], report["new"], report["ignored"], report["queued"]) == (
        1, 2, 2, 3, 2)
    calls = [json.loads(line)["args"] for line in record.read_text().splitlines()]
    assert ["api", "repos/acme/app/pulls/7/comments", "--paginate"] in calls
    [thread_id] = report["threads"]

    def review_thread() -> dict[str, Any] | None:
        threads = env.api("GET", f"/api/v1/forum/threads?run_id={run_id}").data["threads"]
        return next((t for t in threads if t["thread_id"] == thread_id), None)

    assert wait_until(review_thread, timeout=20, message="the review thread")["title"] == "Review feedback: app #7"
    again = json.loads(env.cli("review", "sync", "--run-id", run_id, "--json").stdout)["review_sync"]
    assert (again["new"], again["queued"], again["threads"]) == (0, 2, [])
    assert env.snapshot(run_id)["review"] == {"queued": 2, "dispatched": 0}
    assert env.snapshot(run_id)["next"] == "metawsm review sync --ticket T-1 --dispatch"
    sent = env.cli("review", "sync", "--run-id", run_id, "--dispatch")
    assert sent.returncode == 0, sent.stderr
    assert "2 dispatched (iteration 1)" in sent.stdout
    assert env.snapshot(run_id)["review"] == {"queued": 0, "dispatched": 2}
    env.wait_pane_output(agent["session"], "New feedback from the operator (iteration 1)")
    feedback = (env.workspace_root / agent["workspace"] / ".metawsm" / "feedback.md").read_text()
    assert "carol (changes_requested): Please add a test." in feedback
    assert "dave on feature.txt:1: Typo here." in feedback and "coverage" not in feedback

    # auth check, from a shell whose PATH has the same gh.
    checked = subprocess.run([sys.executable, "-m", "metawsm", "auth", "check"], capture_output=True, text=True,
                             env={**env.cli_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                                  "GH_RECORD": str(record)}, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.splitlines()[0] == "gh: installed=yes logged_in=yes"
    assert "git_pr.provider auto uses: github" in checked.stdout


def test_auth_check_without_gh_exits_1(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "metawsm", "auth", "check", "--json"], capture_output=True,
                            text=True, env={**os.environ, "PATH": str(tmp_path)}, timeout=60)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"gh": {"installed": False, "logged_in": False,
                                                "detail": "gh CLI not found on PATH"}, "auto_provider": "push"}


def test_the_run_keeps_supervising_while_a_commit_runs_its_tests(runs_env: Callable[..., RunsEnv],
                                                                  tmp_path: Path) -> None:
    """A commit's test command waits for a file; meanwhile the Run restarts its crashed agent actor:
    its mailbox is not blocked by the commit's work."""
    release = tmp_path / "release"
    wait_for_release = f"while [ ! -f {release} ]; do sleep 0.05; done"
    env = runs_env(agent=LEAVES_WORK_AGENT, done=DONE, policy={"git_pr": {
        "test_commands": ["echo waiting for the release", wait_for_release], "required_checks": ["tests"]}})
    run = env.start_run(mode="bootstrap")
    run_id = run["run_id"]
    env.wait_status(run_id, "completed", timeout=30)
    committing = subprocess.Popen([sys.executable, "-m", "metawsm", "commit", "--run-id", run_id, "--json"],
                                  cwd=env.repo, env=env.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    try:
        log = env.daemon_dir / ".metawsm" / "logs" / f"run-{run_id}.log"
        wait_until(lambda: log.exists() and "waiting for the release" in log.read_text(), timeout=30,
                   message="the commit's test command to start")
        crashed = env.api("POST", f"/api/v1/debug/actors/root/runs/{run_id}/agent/crash")
        assert crashed.status == 200, crashed

        def agent_restarted() -> bool:
            node = find_node(env.actors(run_id), "TmuxAgent[agent]")
            return bool(node and node["restarts"] == 1 and node["state"] == "running")

        wait_until(agent_restarted, timeout=20, message="the Run to restart its agent while the commit waits")
        assert committing.poll() is None  # the commit is still waiting for its tests
        release.write_text("go\n")
        out, err = committing.communicate(timeout=60)
        assert committing.returncode == 0, err
        [repo] = json.loads(out)["commit"]["repos"]
        assert repo["status"] == "committed"
    finally:
        if committing.poll() is None:
            committing.kill()
            committing.wait()
