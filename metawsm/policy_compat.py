"""Policies written for the Go version of metawsm: the fields only it had, and what they do here.

A Go policy must start this daemon. Its sections are part of the typed schema (see
:mod:`metawsm.policy`); this module holds the part that came from the Go version:

* the sections and structures only it had (``git_pr``, ``operator.llm``, ``close``,
  ``forum.docs_sync``, the docs API endpoints) and their validation, with the Go messages.
  ``git_pr`` and ``operator.llm`` are typed for the features that will use them;
* :data:`INERT_FIELDS`, the one table of fields that are accepted and validated but change
  nothing here yet. ``metawsm serve`` and ``metawsm policy check`` name each one that a policy
  file sets, once, and ``policy-init`` leaves them out of the file it writes. When a later change
  gives a field a meaning, removing its line from the table is all the policy side needs.

Nothing here imports :mod:`metawsm.policy`, which imports this module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "AUTHORITY_MODES",
    "GIT_PR_CHECKS",
    "INERT_FIELDS",
    "ClosePolicy",
    "DocsApiPolicy",
    "DocsEndpoint",
    "ForumDocsSync",
    "GitPrPolicy",
    "OperatorLlmPolicy",
    "ReviewFeedbackPolicy",
    "docs_compat_failures",
    "git_pr_failures",
    "operator_llm_failures",
    "inert_fields_in",
    "inert_warning",
    "without_inert_fields",
]

AUTHORITY_MODES = ("workspace_active",)
LLM_MODES = ("off", "assist", "auto")
GIT_PR_MODES = ("off", "assist", "auto")
GIT_PR_CREDENTIAL_MODES = ("local_user_auth",)
GIT_PR_CHECKS = ("tests", "forbidden_files", "ticket_workflow", "clean_tree")
GIT_PR_PROVIDERS = ("auto", "github", "push")
REVIEW_FEEDBACK_MODES = ("assist", "auto")

# Dotted paths; ``[]`` stands for every entry of a list. Keep the order of the Go schema: it is
# the order of the warnings.
INERT_FIELDS: tuple[str, ...] = (
    "docs.authority_mode",
    "docs.stale_warning_seconds",
    "docs.api.workspace_endpoints",
    "docs.api.repo_endpoints",
    "docs.api.request_timeout_seconds",
    "close.require_clean_git",
    "operator.llm.max_tokens",
    "forum.enabled",
    "forum.docs_sync.enabled",
    "git_pr.credential_mode",
    "git_pr.branch_template",
    "git_pr.allowed_repos",
    "git_pr.review_feedback.enabled",
    "git_pr.review_feedback.mode",
    "git_pr.review_feedback.include_review_comments",
    "git_pr.review_feedback.max_items_per_sync",
    "git_pr.review_feedback.auto_dispatch_cap_per_interval",
    "agent_profiles[].skills",
)

Seconds = int | float


class _CompatSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The options of every policy section (see ``metawsm.policy._Section``)."""


class DocsEndpoint(_CompatSection, frozen=True):
    """A docmgr HTTP server. Every field defaults to empty so that a missing one gets the
    validation message of the Go version rather than a decoding error."""

    name: str = ""
    base_url: str = ""
    web_url: str = ""
    repo: str = ""
    workspace: str = ""  # required for workspace endpoints only


class DocsApiPolicy(_CompatSection, frozen=True):
    # The Go version writes ``null`` for "no endpoints"; both read as an empty list.
    workspace_endpoints: list[DocsEndpoint] | None = []
    repo_endpoints: list[DocsEndpoint] | None = []
    request_timeout_seconds: Seconds = 3

    def __post_init__(self) -> None:
        for name in ("workspace_endpoints", "repo_endpoints"):
            if getattr(self, name) is None:
                msgspec.structs.force_setattr(self, name, [])


class ClosePolicy(_CompatSection, frozen=True):
    # The close gates here always require clean workspaces, whatever this says.
    require_clean_git: bool = True


class ForumDocsSync(_CompatSection, frozen=True):
    enabled: bool = True


class OperatorLlmPolicy(_CompatSection, frozen=True):
    """The operator's optional language-model adviser (metawsm/operator/llm.py).

    ``off`` by default, unlike the Go version (``assist``): consulting a model costs time and
    money on every decision, so it is something to ask for. ``command`` is either the Go form, a
    string split like a shell would (``"codex"`` is run as ``codex exec [--model M] <prompt>``),
    or an argv list that gets the run's context as JSON on stdin. ``max_tokens`` is validated
    and passed to nothing, as in the Go version, so it stays in :data:`INERT_FIELDS`.
    """

    mode: str = "off"  # off|assist|auto, compared trimmed and lower-cased like the Go version
    command: str | list[str] = "codex"
    model: str = ""
    timeout_seconds: Seconds = 30
    max_tokens: int = 400


def _default_required_checks() -> list[str]:
    return list(GIT_PR_CHECKS)


def _default_forbidden_patterns() -> list[str]:
    return [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa", "id_ed25519"]


class ReviewFeedbackPolicy(_CompatSection, frozen=True):
    enabled: bool = False
    mode: str = "assist"
    include_review_comments: bool = True
    ignore_authors: list[str] = []
    max_items_per_sync: int = 50
    auto_dispatch_cap_per_interval: int = 1


class GitPrPolicy(_CompatSection, frozen=True):
    """Commits and pull requests of a run's workspaces.  ``metawsm commit`` honours ``mode`` (off
    disables it), ``required_checks``, ``require_all``, ``test_commands`` and
    ``forbidden_file_patterns``, ``metawsm pr`` ``provider`` (metawsm/runs/delivery.py and
    forge.py); the rest is in :data:`INERT_FIELDS`."""

    mode: str = "assist"
    provider: str = "auto"  # the forge `metawsm pr` uses: auto|github|push (not in the Go version)
    credential_mode: str = "local_user_auth"
    branch_template: str = "{ticket}/{repo}/{run}"
    require_all: bool = True
    required_checks: list[str] = msgspec.field(default_factory=_default_required_checks)
    test_commands: list[str] = []
    forbidden_file_patterns: list[str] = msgspec.field(default_factory=_default_forbidden_patterns)
    allowed_repos: list[str] = []
    default_labels: list[str] = []
    default_reviewers: list[str] = []
    review_feedback: ReviewFeedbackPolicy = msgspec.field(default_factory=ReviewFeedbackPolicy)


# --------------------------------------------------------------------------- validation


def _blank(value: str) -> bool:
    return not value.strip()


def _empty_values(values: list[str]) -> bool:
    return any(_blank(value) for value in values)


def _bad_url(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:  # e.g. an unclosed "[" of an IPv6 address
        return True
    return parts.scheme not in ("http", "https") or not host


def _endpoint_failures(kind: str, endpoint: DocsEndpoint, seen: set[str]) -> Iterator[str]:
    name = endpoint.name.strip()
    if not name:
        yield f"docs.api.{kind}_endpoints.name cannot be empty"
    if name in seen:
        yield f'duplicate docs API endpoint name "{name}"'
    seen.add(name)
    if _blank(endpoint.base_url):
        yield f'docs.api endpoint "{name}" base_url cannot be empty'
    if _bad_url(endpoint.base_url):
        yield f'docs.api endpoint "{name}" has invalid base_url "{endpoint.base_url.strip()}"'
    if not _blank(endpoint.web_url) and _bad_url(endpoint.web_url):
        yield f'docs.api endpoint "{name}" has invalid web_url "{endpoint.web_url.strip()}"'
    if _blank(endpoint.repo):
        yield f'docs.api endpoint "{name}" repo cannot be empty'
    if kind == "workspace" and _blank(endpoint.workspace):
        yield f'docs.api workspace endpoint "{name}" requires workspace'


def docs_compat_failures(authority_mode: str, stale_warning_seconds: Seconds, api: DocsApiPolicy) -> Iterator[str]:
    """The Go version's rules for its ``docs`` fields, in its order (first failure wins)."""
    if _blank(authority_mode):
        yield "docs.authority_mode cannot be empty"
    if authority_mode.strip() not in AUTHORITY_MODES:
        yield 'docs.authority_mode must be "workspace_active"'
    if stale_warning_seconds <= 0:
        yield "docs.stale_warning_seconds must be > 0"
    if api.request_timeout_seconds <= 0:
        yield "docs.api.request_timeout_seconds must be > 0"
    # Names are unique across both lists: a command names an endpoint without saying its kind.
    seen: set[str] = set()
    for kind, endpoints in (("workspace", api.workspace_endpoints), ("repo", api.repo_endpoints)):
        for endpoint in endpoints or ():
            yield from _endpoint_failures(kind, endpoint, seen)


# --------------------------------------------------------------------------- inert fields


def _has_path(node: Any, parts: list[str]) -> bool:
    """Whether plain JSON data sets the path (``name[]``: in any entry of the list ``name``)."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    if not isinstance(node, Mapping):
        return False
    if head.endswith("[]"):
        entries = node.get(head[:-2])
        return isinstance(entries, list) and any(_has_path(entry, rest) for entry in entries)
    return head in node and _has_path(node[head], rest)


def inert_fields_in(data: Any) -> list[str]:
    """The inert fields a policy file sets, in table order, each once.

    Set means written in the file, whatever the value: a field is reported because the author
    may expect it to do something, and a value equal to the Go default still did something there.
    """
    return [field for field in INERT_FIELDS if _has_path(data, field.split("."))]


def inert_warning(field: str) -> str:
    return f"policy: {field} is accepted for compatibility and has no effect here"


def _drop(node: Any, parts: list[str]) -> None:
    if not isinstance(node, dict) or not parts:
        return
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        for entry in node.get(head[:-2]) or ():
            _drop(entry, rest)
        return
    if not rest:
        node.pop(head, None)
        return
    child = node.get(head)
    _drop(child, rest)
    if isinstance(child, dict) and not child:
        node.pop(head)  # a section left with nothing in it goes too


def without_inert_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Plain policy data without the inert fields (changes ``data`` in place and returns it).

    ``policy-init`` writes this, so a fresh policy never warns about its own content.
    """
    for field in INERT_FIELDS:
        _drop(data, field.split("."))
    return data


def operator_llm_failures(llm: OperatorLlmPolicy) -> Iterator[str]:
    if llm.mode.strip().lower() not in LLM_MODES:
        yield "operator.llm.mode must be off|assist|auto"
    command = llm.command
    if _blank(command) if isinstance(command, str) else (not command or _blank(command[0])):
        yield "operator.llm.command cannot be empty"
    if llm.timeout_seconds <= 0:
        yield "operator.llm.timeout_seconds must be > 0"
    if llm.max_tokens <= 0:
        yield "operator.llm.max_tokens must be > 0"


def git_pr_failures(g: GitPrPolicy) -> Iterator[str]:
    if g.mode not in GIT_PR_MODES:
        yield "git_pr.mode must be off|assist|auto"
    if g.provider not in GIT_PR_PROVIDERS:
        yield "git_pr.provider must be auto|github|push"
    if g.credential_mode not in GIT_PR_CREDENTIAL_MODES:
        yield "git_pr.credential_mode must be local_user_auth"
    if _blank(g.branch_template):
        yield "git_pr.branch_template cannot be empty"
    if _empty_values(g.required_checks):
        yield "git_pr.required_checks cannot contain empty values"
    for check in g.required_checks:
        if check.strip() not in GIT_PR_CHECKS:
            yield f'git_pr.required_checks contains unsupported check "{check.strip()}"'
    for field in ("test_commands", "forbidden_file_patterns", "allowed_repos", "default_labels",
                  "default_reviewers"):
        if _empty_values(getattr(g, field)):
            yield f"git_pr.{field} cannot contain empty values"
    r = g.review_feedback
    if r.mode not in REVIEW_FEEDBACK_MODES:
        yield "git_pr.review_feedback.mode must be assist|auto"
    if not r.include_review_comments:
        yield "git_pr.review_feedback.include_review_comments must be true for V1"
    if _empty_values(r.ignore_authors):
        yield "git_pr.review_feedback.ignore_authors cannot contain empty values"
    for field in ("max_items_per_sync", "auto_dispatch_cap_per_interval"):
        if getattr(r, field) <= 0:
            yield f"git_pr.review_feedback.{field} must be > 0"
