"""Workspace and docs providers against real temporary git repositories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from metawsm.policy import policy_from_mapping
from metawsm.runs.providers import (
    BuiltinDocs,
    DocmgrDocs,
    DocsError,
    GitWorktreeProvider,
    NoDocs,
    WorkspaceError,
    WsmProvider,
    docs_provider,
    resolve_repo,
    workspace_provider,
)


@pytest.fixture(autouse=True)
def hermetic_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Git sees only this test's configuration (identity, default branch), never the host's."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n"
                      "[init]\n\tdefaultBranch = main\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                "GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(var, raising=False)
    return config


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, text in (files or {"README.md": "hello\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def commit_file(repo: Path, name: str, text: str, message: str = "change") -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def worktree_paths(repo: Path) -> list[Path]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [Path(line.split(" ", 1)[1]).resolve() for line in out.splitlines()
            if line.startswith("worktree ")]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``<tmp>/code/app`` (the user's checkout, the cwd) with a sibling repo ``lib``."""
    app = make_repo(tmp_path / "code" / "app")
    make_repo(tmp_path / "code" / "lib", {"lib.txt": "lib\n"})
    return app


@pytest.fixture
def provider(project: Path) -> GitWorktreeProvider:
    return GitWorktreeProvider(root=".metawsm/workspaces", base_branch="main",
                               branch_prefix="task", repo_sources={}, cwd=project)


# -- resolve_repo ----------------------------------------------------------------------------


def test_resolve_repo_prefers_the_policy_map(tmp_path: Path, project: Path) -> None:
    other = make_repo(tmp_path / "elsewhere" / "somewhere-else")
    assert resolve_repo("app", {"app": str(other)}, project) == other.resolve()
    # Relative paths are taken against cwd.
    assert resolve_repo("x", {"x": "../../elsewhere/somewhere-else"}, project) == other.resolve()
    with pytest.raises(WorkspaceError, match=r'repo "x": workspace.repo_sources maps it to .*nope'):
        resolve_repo("x", {"x": "nope"}, project)


def test_resolve_repo_current_repo_by_name(project: Path) -> None:
    assert resolve_repo("app", {}, project) == project.resolve()
    sub = project / "src" / "deep"
    sub.mkdir(parents=True)
    assert resolve_repo("app", {}, sub) == project.resolve()


def test_resolve_repo_sibling(tmp_path: Path, project: Path) -> None:
    lib = (tmp_path / "code" / "lib").resolve()
    assert resolve_repo("lib", {}, project) == lib
    # From inside the current repo, the sibling of its top level.
    sub = project / "pkg"
    sub.mkdir()
    assert resolve_repo("lib", {}, sub) == lib
    # From a plain directory next to the repos.
    (tmp_path / "code" / "notes").mkdir()
    assert resolve_repo("lib", {}, tmp_path / "code" / "notes") == lib


def test_resolve_repo_rejects_non_repos_and_says_where_it_looked(tmp_path: Path,
                                                                 project: Path) -> None:
    (tmp_path / "code" / "plain").mkdir()
    with pytest.raises(WorkspaceError) as err:
        resolve_repo("plain", {}, project)
    message = str(err.value)
    assert 'repo "plain" not found' in message
    assert "workspace.repo_sources" in message and str(tmp_path / "code" / "plain") in message
    # A subdirectory of some repository is not a repository of its own.
    (project / "inner").mkdir()
    (project / "sub").mkdir()
    with pytest.raises(WorkspaceError, match='repo "inner" not found'):
        resolve_repo("inner", {}, project / "sub")
    with pytest.raises(WorkspaceError, match="invalid repo name"):
        resolve_repo("../lib", {}, project)


# -- plan / create / delete ------------------------------------------------------------------


def test_plan_has_no_side_effects(provider: GitWorktreeProvider, project: Path,
                                  tmp_path: Path) -> None:
    plans = provider.plan("T-1", ["app", "lib"])
    root = project / ".metawsm" / "workspaces"
    assert [(p.repo, p.dest, p.branch, p.base_branch) for p in plans] == [
        ("app", str(root / "T-1" / "app"), "task/T-1", "main"),
        ("lib", str(root / "T-1" / "lib"), "task/T-1", "main"),
    ]
    assert plans[1].source == str((tmp_path / "code" / "lib").resolve())
    assert not (project / ".metawsm").exists()
    assert len(worktree_paths(project)) == 1
    assert "task/T-1" not in git(project, "branch", "--list")


def test_create_layout_branch_and_idempotence(provider: GitWorktreeProvider, project: Path,
                                              tmp_path: Path) -> None:
    ws = provider.create("T-1", ["app", "lib"])
    assert ws == project / ".metawsm" / "workspaces" / "T-1"
    for repo, source in (("app", project), ("lib", tmp_path / "code" / "lib")):
        dest = ws / repo
        assert git(dest, "rev-parse", "--abbrev-ref", "HEAD") == "task/T-1"
        assert git(dest, "rev-parse", "HEAD") == git(source, "rev-parse", "main")
        assert dest.resolve() in worktree_paths(source)
    assert (ws / "app" / "README.md").read_text() == "hello\n"
    # The user's checkout stays on main.
    assert git(project, "rev-parse", "--abbrev-ref", "HEAD") == "main"

    # Work in the workspace survives a second create (retry / reuse).
    head = commit_file(ws / "app", "work.txt", "work\n")
    assert provider.create("T-1", ["app", "lib"]) == ws
    assert git(ws / "app", "rev-parse", "HEAD") == head
    assert len(worktree_paths(project)) == 2


def test_create_with_missing_base_branch_is_a_clear_error(project: Path) -> None:
    provider = GitWorktreeProvider(".metawsm/workspaces", "develop", "task", {}, project)
    with pytest.raises(WorkspaceError, match=r'repo "app": base branch "develop" does not exist'):
        provider.create("T-1", ["app"])
    assert len(worktree_paths(project)) == 1


def test_create_refuses_a_foreign_directory(provider: GitWorktreeProvider, project: Path) -> None:
    dest = provider.repo_path("T-1", "app")
    dest.mkdir(parents=True)
    (dest / "precious.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="already exists and is not a worktree"):
        provider.create("T-1", ["app"])
    assert (dest / "precious.txt").read_text() == "mine"


def test_invalid_workspace_names_are_refused(provider: GitWorktreeProvider) -> None:
    for bad in ("", "..", "a/b", "a b"):
        with pytest.raises(WorkspaceError, match="invalid workspace name"):
            provider.plan(bad, ["app"])


def test_delete_removes_worktrees_and_tolerates_gone(provider: GitWorktreeProvider,
                                                     project: Path, tmp_path: Path) -> None:
    ws = provider.create("T-1", ["app", "lib"])
    (ws / ".metawsm").mkdir()
    (ws / ".metawsm" / "run.json").write_text("{}")
    (ws / "app" / "scratch.txt").write_text("uncommitted")  # --force removes it anyway
    provider.delete("T-1", ["app", "lib"])
    assert not ws.exists()
    assert worktree_paths(project) == [project.resolve()]
    assert worktree_paths(tmp_path / "code" / "lib") == [(tmp_path / "code" / "lib").resolve()]
    assert "task/T-1" in git(project, "branch", "--list")  # the work stays reachable
    provider.delete("T-1", ["app", "lib"])  # already gone: fine
    # A worktree whose directory vanished behind git's back is pruned.
    ws = provider.create("T-2", ["app"])
    subprocess.run(["rm", "-rf", str(ws / "app")], check=True)
    provider.delete("T-2", ["app"])
    assert worktree_paths(project) == [project.resolve()]
    # And it can be created again afterwards.
    provider.create("T-2", ["app"])
    assert (ws / "app" / "README.md").exists()


def test_create_never_resets_a_leftover_branch_with_work(provider: GitWorktreeProvider,
                                                         project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    work = commit_file(ws / "app", "work.txt", "work\n")
    provider.delete("T-1", ["app"])
    with pytest.raises(WorkspaceError, match=r"branch task/T-1 already exists .* 1 commit\(s\)"):
        provider.create("T-1", ["app"])
    assert git(project, "rev-parse", "task/T-1") == work


# -- inspection ------------------------------------------------------------------------------


def test_dirty_files_fingerprint_and_last_commit(provider: GitWorktreeProvider) -> None:
    ws = provider.create("T-1", ["app"])
    app = ws / "app"
    assert provider.dirty_files("T-1", "app") == []
    clean = provider.status_fingerprint("T-1", "app")
    assert provider.status_fingerprint("T-1", "app") == clean

    (app / "README.md").write_text("changed\n")
    (app / "new dir").mkdir()
    (app / "new dir" / "n.txt").write_text("new\n")
    assert sorted(provider.dirty_files("T-1", "app")) == ["README.md", "new dir/n.txt"]
    first = provider.status_fingerprint("T-1", "app")
    assert first != clean
    # Editing an already-modified file changes the fingerprint, though the status does not.
    (app / "README.md").write_text("changed again, longer\n")
    second = provider.status_fingerprint("T-1", "app")
    assert second != first

    git(app, "add", "-A")
    git(app, "commit", "-q", "-m", "work")
    assert provider.dirty_files("T-1", "app") == []
    assert provider.status_fingerprint("T-1", "app") not in (clean, first, second)
    when = provider.last_commit_time("T-1", "app")
    assert when == float(git(app, "log", "-1", "--format=%ct"))
    assert provider.last_commit_time("T-9", "app") is None
    with pytest.raises(WorkspaceError, match="does not exist"):
        provider.dirty_files("T-9", "app")


# -- merge -----------------------------------------------------------------------------------


def _snapshot(repo: Path) -> tuple[str, str, str, str]:
    return (git(repo, "rev-parse", "--abbrev-ref", "HEAD"), git(repo, "rev-parse", "HEAD"),
            git(repo, "status", "--porcelain"), (repo / "README.md").read_text())


def test_merge_fast_forwards_a_base_nobody_has_checked_out(provider: GitWorktreeProvider, project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    work = commit_file(ws / "app", "feature.txt", "feature\n", "add feature")
    git(project, "switch", "-q", "-c", "dev")
    (project / "README.md").write_text("user edit in progress\n")
    before = _snapshot(project)
    assert provider.merge("T-1", "app", "Merge T-1") == work == git(project, "rev-parse", "main")
    assert _snapshot(project) == before


def test_merge_through_a_temporary_worktree_leaves_the_user_checkout_alone(
        provider: GitWorktreeProvider, project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    work = commit_file(ws / "app", "feature.txt", "feature\n", "add feature")
    commit_file(project, "other.txt", "the base moved on\n", "base moves")  # no fast-forward now
    # The user works on another branch, with uncommitted changes.
    git(project, "switch", "-q", "-c", "dev")
    (project / "README.md").write_text("user edit in progress\n")
    (project / "untracked.txt").write_text("mine\n")
    before = _snapshot(project)
    main_before = git(project, "rev-parse", "main")

    merged = provider.merge("T-1", "app", "Merge T-1")
    assert git(project, "rev-parse", "main") == merged
    parents = git(project, "rev-list", "--parents", "-n", "1", merged).split()[1:]
    assert parents == [main_before, work]
    assert git(project, "log", "-1", "--format=%s", merged) == "Merge T-1"
    assert git(project, "show", f"{merged}:feature.txt") == "feature"
    assert _snapshot(project) == before
    assert (project / "untracked.txt").read_text() == "mine\n"
    # The temporary worktree is gone.
    assert worktree_paths(project) == [project.resolve(), (ws / "app").resolve()]
    # Nothing new to merge: the base stays where it is.
    assert provider.merge("T-1", "app") == merged


def test_merge_updates_a_clean_checkout_of_the_base_as_git_merge_would(provider: GitWorktreeProvider,
                                                                       project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    work = commit_file(ws / "app", "feature.txt", "feature\n")
    (project / "untracked.txt").write_text("mine\n")  # untracked files are no local change
    assert provider.merge("T-1", "app") == work == git(project, "rev-parse", "HEAD")  # fast-forward
    assert (project / "feature.txt").read_text() == "feature\n"
    assert "?? untracked.txt" in git(project, "status", "--porcelain").splitlines()
    # The base moves on in the checkout: the next merge is a merge commit, made there.
    again = commit_file(ws / "app", "more.txt", "more\n")
    base = commit_file(project, "other.txt", "other\n")
    merged = provider.merge("T-1", "app", "Merge again")
    assert git(project, "rev-list", "--parents", "-n", "1", merged).split()[1:] == [base, again]
    assert (project / "more.txt").is_file() and git(project, "rev-parse", "HEAD") == merged
    assert len(worktree_paths(project)) == 2


def test_merge_refuses_when_the_checked_out_base_has_local_changes(provider: GitWorktreeProvider,
                                                                   project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    commit_file(ws / "app", "feature.txt", "feature\n")
    (project / "README.md").write_text("user edit in progress\n")
    before = _snapshot(project)
    with pytest.raises(WorkspaceError, match=r'"app": main is checked out in .*app with local changes \(README.md\)'):
        provider.merge("T-1", "app")
    assert _snapshot(project) == before
    assert len(worktree_paths(project)) == 2


def test_merge_conflict_changes_nothing(provider: GitWorktreeProvider, project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    commit_file(ws / "app", "README.md", "workspace version\n")
    git(project, "switch", "-q", "-c", "dev")
    git(project, "switch", "-q", "main")
    commit_file(project, "README.md", "base version\n")
    git(project, "switch", "-q", "dev")
    main_before = git(project, "rev-parse", "main")
    with pytest.raises(WorkspaceError, match="main has moved since task/T-1 was made and the two conflict in README.md"):
        provider.merge("T-1", "app")
    assert git(project, "rev-parse", "main") == main_before
    assert len(worktree_paths(project)) == 2


def test_merge_refuses_a_dirty_workspace(provider: GitWorktreeProvider, project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    git(project, "switch", "-q", "-c", "dev")
    (ws / "app" / "README.md").write_text("not committed\n")
    with pytest.raises(WorkspaceError, match="uncommitted changes"):
        provider.merge("T-1", "app")


def test_merge_works_without_a_git_identity(provider: GitWorktreeProvider, project: Path,
                                            hermetic_git: Path) -> None:
    ws = provider.create("T-1", ["app"])
    commit_file(ws / "app", "feature.txt", "feature\n")
    commit_file(project, "other.txt", "other\n")  # the base moved: a merge commit is needed
    git(project, "switch", "-q", "-c", "dev")
    hermetic_git.write_text("[init]\n\tdefaultBranch = main\n[user]\n\tuseConfigOnly = true\n")
    merged = provider.merge("T-1", "app")
    assert git(project, "log", "-1", "--format=%an <%ae>", merged) == "metawsm <metawsm@localhost>"


# -- provider selection ----------------------------------------------------------------------


def test_workspace_provider_from_policy(project: Path, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    chosen = workspace_provider(policy_from_mapping({}), project)
    assert isinstance(chosen, GitWorktreeProvider)
    assert chosen.root == project / ".metawsm" / "workspaces"
    assert chosen.branch("W") == "task/W" and chosen.base_branch == "main"
    custom = workspace_provider(policy_from_mapping({"workspace": {
        "root": str(tmp_path / "ws"), "branch_prefix": "agents", "base_branch": "trunk",
        "repo_sources": {"app": str(project)}}}), tmp_path, base_branch="release")
    assert isinstance(custom, GitWorktreeProvider)
    assert (custom.root, custom.branch("W"), custom.base_branch) == (tmp_path / "ws", "agents/W",
                                                                     "release")
    assert custom.source("app") == project.resolve()

    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(WorkspaceError) as err:
        workspace_provider(policy_from_mapping({"workspace": {"provider": "wsm"}}), project)
    assert str(err.value) == ('workspace provider "wsm" is selected but the wsm binary is not '
                              "installed; use git_worktree")
    with pytest.raises(WorkspaceError):
        WsmProvider()


# -- docs ------------------------------------------------------------------------------------


def test_verify_ticket_and_ticket_dir(tmp_path: Path) -> None:
    docs = BuiltinDocs()
    assert docs.enabled and docs.verify_ticket("MEN-12_a.b") == "MEN-12_a.b"
    for bad in ("", ".", "..", "a/b", "a b", "../x", "t\n"):
        with pytest.raises(DocsError, match="invalid ticket"):
            docs.verify_ticket(bad)
    with pytest.raises(DocsError) as err:
        docs.verify_ticket("a/b")
    assert str(err.value) == 'invalid ticket "a/b"'
    assert docs.ticket_dir(tmp_path, "T-1") == tmp_path / "ttmp" / "T-1"


def test_builtin_seed_creates_and_commits_docs(provider: GitWorktreeProvider,
                                               project: Path) -> None:
    ws = provider.create("T-1", ["app"])
    repo = ws / "app"
    base_head = git(repo, "rev-parse", "HEAD")
    written = BuiltinDocs().seed(repo, project, "T-1", "copy_from_repo_on_start")
    folder = repo / "ttmp" / "T-1"
    assert sorted(p.name for p in written) == ["changelog.md", "index.md", "tasks.md"]
    assert all(p.parent == folder for p in written)
    index = (folder / "index.md").read_text()
    assert "T-1" in index and "Created:" in index
    assert git(repo, "status", "--porcelain") == ""
    assert provider.dirty_files("T-1", "app") == []
    assert git(repo, "log", "-1", "--format=%s") == "metawsm: seed ticket docs for T-1"
    assert git(repo, "rev-parse", "HEAD~1") == base_head
    # The user's checkout got nothing.
    assert not (project / "ttmp").exists()
    assert git(project, "status", "--porcelain", "--", ".", ":!.metawsm") == ""
    # Seeding again is a no-op.
    assert BuiltinDocs().seed(repo, project, "T-1", "copy_from_repo_on_start") == []
    assert git(repo, "log", "-1", "--format=%s") == "metawsm: seed ticket docs for T-1"
    assert git(repo, "rev-list", "--count", "HEAD") == "2"


def test_builtin_seed_copies_from_the_source_checkout(provider: GitWorktreeProvider,
                                                      project: Path) -> None:
    # The user drafted docs for the ticket but has not committed them.
    drafts = project / "ttmp" / "T-2"
    (drafts / "design").mkdir(parents=True)
    (drafts / "index.md").write_text("# My own index\n")
    (drafts / "design" / "plan.md").write_text("plan\n")
    ws = provider.create("T-2", ["app"])
    repo = ws / "app"
    written = BuiltinDocs().seed(repo, project, "T-2", "copy_from_repo_on_start")
    folder = repo / "ttmp" / "T-2"
    assert sorted(p.relative_to(folder).as_posix() for p in written) == ["design/plan.md",
                                                                          "index.md"]
    assert (folder / "index.md").read_text() == "# My own index\n"
    assert not (folder / "tasks.md").exists()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "show", "HEAD:ttmp/T-2/design/plan.md") == "plan"


def test_builtin_seed_keeps_docs_already_in_the_base_branch(tmp_path: Path) -> None:
    app = make_repo(tmp_path / "app", {"ttmp/T-3/index.md": "# committed\n"})
    provider = GitWorktreeProvider(tmp_path / "ws", "main", "task", {}, app)
    repo = provider.create("T-3", ["app"]) / "app"
    head = git(repo, "rev-parse", "HEAD")
    assert BuiltinDocs().seed(repo, app, "T-3", "copy_from_repo_on_start") == []
    assert git(repo, "rev-parse", "HEAD") == head
    assert (repo / "ttmp" / "T-3" / "index.md").read_text() == "# committed\n"


def test_builtin_seed_mode_none_and_bad_mode(provider: GitWorktreeProvider,
                                             project: Path) -> None:
    repo = provider.create("T-1", ["app"]) / "app"
    assert BuiltinDocs().seed(repo, project, "T-1", "none") == []
    assert not (repo / "ttmp").exists()
    with pytest.raises(DocsError, match="unknown docs seed mode"):
        BuiltinDocs().seed(repo, project, "T-1", "sometimes")
    with pytest.raises(DocsError, match='invalid ticket "../x"'):
        BuiltinDocs().seed(repo, project, "../x", "copy_from_repo_on_start")


def test_builtin_seed_commits_without_a_git_identity(provider: GitWorktreeProvider,
                                                     project: Path, hermetic_git: Path) -> None:
    repo = provider.create("T-1", ["app"]) / "app"
    hermetic_git.write_text("[init]\n\tdefaultBranch = main\n[user]\n\tuseConfigOnly = true\n")
    BuiltinDocs().seed(repo, None, "T-1", "copy_from_repo_on_start")
    assert git(repo, "log", "-1", "--format=%an <%ae>") == "metawsm <metawsm@localhost>"
    assert git(repo, "status", "--porcelain") == ""


def test_builtin_seed_leaves_other_staged_changes_alone(provider: GitWorktreeProvider,
                                                        project: Path) -> None:
    repo = provider.create("T-1", ["app"]) / "app"
    (repo / "README.md").write_text("agent's staged work\n")
    git(repo, "add", "README.md")
    BuiltinDocs().seed(repo, project, "T-1", "copy_from_repo_on_start")
    assert git(repo, "show", "--name-only", "--format=", "HEAD").split() == [
        "ttmp/T-1/changelog.md", "ttmp/T-1/index.md", "ttmp/T-1/tasks.md"]
    assert git(repo, "status", "--porcelain") == "M  README.md"


def test_no_docs_does_nothing(tmp_path: Path) -> None:
    docs = NoDocs()
    assert docs.enabled is False
    assert docs.verify_ticket("anything at all") == "anything at all"
    assert docs.ticket_dir(tmp_path, "T") is None
    assert docs.seed(tmp_path, tmp_path, "T", "copy_from_repo_on_start") == []
    assert list(tmp_path.iterdir()) == [tmp_path / "gitconfig"]


def test_docs_provider_from_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(docs_provider(policy_from_mapping({})), BuiltinDocs)
    assert isinstance(docs_provider(policy_from_mapping({"docs": {"provider": "none"}})), NoDocs)
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    with pytest.raises(DocsError) as err:
        docs_provider(policy_from_mapping({"docs": {"provider": "docmgr"}}))
    assert str(err.value) == ('docs provider "docmgr" is selected but the docmgr binary is not '
                              "installed; use builtin or none")
    with pytest.raises(DocsError):
        DocmgrDocs()
