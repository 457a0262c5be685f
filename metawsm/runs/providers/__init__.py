"""Workspace and docs providers: what runs need from git worktrees (or wsm) and ticket docs."""

from __future__ import annotations

from metawsm.runs.providers.docs import BuiltinDocs, DocmgrDocs, DocsError, NoDocs, docs_provider
from metawsm.runs.providers.workspace import (
    GitWorktreeProvider,
    RepoPlan,
    WorkspaceError,
    WsmProvider,
    resolve_repo,
    workspace_provider,
)

__all__ = [
    "BuiltinDocs",
    "DocmgrDocs",
    "DocsError",
    "GitWorktreeProvider",
    "NoDocs",
    "RepoPlan",
    "WorkspaceError",
    "WsmProvider",
    "docs_provider",
    "resolve_repo",
    "workspace_provider",
]
