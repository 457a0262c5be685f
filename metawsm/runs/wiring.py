"""Choosing a run's providers from its frozen spec (not from whatever the policy says today)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metawsm.policy import Policy
from metawsm.runs.model import RunSpec
from metawsm.runs.providers.docs import BuiltinDocs, DocmgrDocs, DocsError, NoDocs
from metawsm.runs.providers.workspace import GitWorktreeProvider, WorkspaceError, WsmProvider, resolve_repo


def workspace_provider_for(spec: RunSpec, policy: Policy) -> Any:
    ws = policy.workspace
    cwd = Path(spec.cwd)
    if spec.workspace_provider == "wsm":
        return WsmProvider(base_branch=spec.base_branch, branch_prefix=ws.branch_prefix, cwd=cwd)
    if spec.workspace_provider != "git_worktree":
        raise WorkspaceError(f'unknown workspace provider "{spec.workspace_provider}"; use git_worktree or wsm')
    return GitWorktreeProvider(root=spec.workspace_root, base_branch=spec.base_branch, branch_prefix=ws.branch_prefix,
                               repo_sources=ws.repo_sources, cwd=cwd)


def docs_provider_for(spec: RunSpec) -> Any:
    if spec.docs_provider == "builtin":
        return BuiltinDocs()
    if spec.docs_provider == "none":
        return NoDocs()
    if spec.docs_provider == "docmgr":
        return DocmgrDocs()
    raise DocsError(f'unknown docs provider "{spec.docs_provider}"; use builtin, docmgr or none')


def source_repo(spec: RunSpec, policy: Policy, repo: str) -> Path:
    return resolve_repo(repo, policy.workspace.repo_sources, spec.cwd)
