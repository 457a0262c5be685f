"""The policy file (``.metawsm/policy.json``): typed sections, defaults, loading and validation.

The policy is decoded straight into msgspec Structs so that a typo in a key or a value of the
wrong type is reported with its path instead of silently falling back to a default. Every
Struct is ``kw_only`` (fields are always named, never positional) and ``frozen``: one policy
object is loaded at start and then shared by actors on several threads, so nobody may change it
in place. Build a variant with :func:`policy_from_mapping` or ``msgspec.structs.replace``.

Decoding only checks shapes and types; the semantic rules of the spec (enums, non-empty
strings, positive numbers, cross references) live in :func:`validate_policy`, which reports
the *first* failure with the exact message of the spec. Enum-like fields are plain ``str``
on purpose, so that a bad value is reported by that validation message and not by msgspec.

The schema is a superset of the Go version's: a Go policy loads as is. Its sections that mean
something here (``git_pr``, ``operator``) are typed below; the structures that exist only for
compatibility, and the table of fields that have no effect here yet, are in
:mod:`metawsm.policy_compat`. :func:`read_policy_file` returns the policy together with the
inert fields its file sets, for the start-up warnings.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from metawsm.defaults import DEFAULT_DB_PATH, DEFAULT_POLICY_PATH
from metawsm.policy_compat import (
    INERT_FIELDS,
    ClosePolicy,
    DocsApiPolicy,
    DocsEndpoint,
    ForumDocsSync,
    GitPrPolicy,
    OperatorLlmPolicy,
    ReviewFeedbackPolicy,
    docs_compat_failures,
    git_pr_failures,
    inert_fields_in,
    inert_warning,
    operator_llm_failures,
    without_inert_fields,
)
from metawsm.redact import redact_url

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_POLICY_PATH",
    "POLICY_VERSION",
    "TMUX_SOCKET_AUTO",
    "AgentProfile",
    "ApiPolicy",
    "AgentRef",
    "ClosePolicy",
    "DebugPolicy",
    "DocsApiPolicy",
    "DocsEndpoint",
    "DocsPolicy",
    "ExecutionPolicy",
    "ForumDocsSync",
    "ForumPolicy",
    "ForumRedis",
    "ForumRetention",
    "ForumSla",
    "ForumTopics",
    "GitPrPolicy",
    "HealthPolicy",
    "LoadedPolicy",
    "OperatorLlmPolicy",
    "OperatorPolicy",
    "Policy",
    "PolicyChange",
    "PolicyError",
    "ReviewFeedbackPolicy",
    "RunnerOptions",
    "SupervisionPolicy",
    "TmuxPolicy",
    "WorkspacePolicy",
    "change_applies",
    "default_policy",
    "encode_policy",
    "load_policy",
    "policy_changes",
    "policy_digest",
    "policy_file_bytes",
    "policy_from_mapping",
    "read_policy_file",
    "redacted_policy",
    "redacted_redis_url",
    "validate_policy",
    "with_sections_of",
    "write_default_policy",
]

POLICY_VERSION = 2

WORKSPACE_STRATEGIES = ("create", "fork", "reuse")
WORKSPACE_PROVIDERS = ("git_worktree", "wsm")
DOCS_PROVIDERS = ("builtin", "docmgr", "none")
DOCS_SEED_MODES = ("none", "copy_from_repo_on_start")
REDIS_EMBEDDED_MODES = ("auto", "always", "never")
SUPPORTED_RUNNERS = ("shell", "command", "codex")
# Runners that cannot start anything without an explicit runner_options.command.
RUNNERS_NEEDING_COMMAND = ("shell", "command")
# "auto": one tmux server per daemon, named from the daemon's database path when a run is planned.
TMUX_SOCKET_AUTO = "auto"

# Durations in seconds accept fractions so tests (and impatient users) can poll fast;
# whole numbers stay integers, so the default file reads exactly like the spec.
Seconds = int | float


class PolicyError(Exception):
    """A policy that cannot be read, decoded or validated.

    ``str()`` is always a single line, because the CLI prints it after ``error:`` and the
    daemon refuses to start with it.
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.message = " ".join(message.splitlines())
        self.path = path
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Common options: unknown keys are errors, fields are named, values are immutable."""


class WorkspacePolicy(_Section, frozen=True):
    default_strategy: str = "create"
    branch_prefix: str = "task"
    base_branch: str = "main"
    provider: str = "git_worktree"
    root: str = ".metawsm/workspaces"
    # Repo name -> source repository path, consulted before the current/sibling directory.
    repo_sources: dict[str, str] = {}


class DocsPolicy(_Section, frozen=True):
    provider: str = "builtin"
    seed_mode: str = "copy_from_repo_on_start"
    # From the Go version; policy_compat.INERT_FIELDS says what they do here (nothing yet).
    authority_mode: str = "workspace_active"
    stale_warning_seconds: Seconds = 900
    api: DocsApiPolicy = msgspec.field(default_factory=DocsApiPolicy)


class TmuxPolicy(_Section, frozen=True):
    # ``auto`` (TMUX_SOCKET_AUTO): a server of this daemon's own; any other name is used as is.
    socket: str = TMUX_SOCKET_AUTO
    session_pattern: str = "{agent}-{workspace}"


class ExecutionPolicy(_Section, frozen=True):
    step_retries: int = 1
    # A run request naming more tickets than this is refused: each ticket is a workspace and a
    # tmux session per agent, so an unbounded request could exhaust the machine.
    max_tickets_per_run: int = 10


class HealthPolicy(_Section, frozen=True):
    poll_seconds: Seconds = 2
    # An agent whose pane shows nothing new is polled less and less often, up to this; never past
    # its next idle/stalled threshold, and back to poll_seconds at its next output (docs/runs.md).
    quiet_poll_seconds: Seconds = 10
    idle_seconds: Seconds = 300
    activity_stalled_seconds: Seconds = 900
    progress_stalled_seconds: Seconds = 1200


class OperatorPolicy(_Section, frozen=True):
    unhealthy_confirmations: int = 2
    restart_budget: int = 3
    restart_cooldown_seconds: Seconds = 60
    restart_budget_reset_seconds: Seconds = 1800
    restart_stalled: bool = False
    stale_run_age_seconds: Seconds = 3600
    # Notifications of each decision (metawsm/operator/notify.py); not in the Go version, whose
    # watch loop ran a shell string instead of an argv.
    notify_command: list[str] = []
    notify_timeout_seconds: Seconds = 10
    webhook_url: str = ""
    webhook_attempts: int = 5
    webhook_timeout_seconds: Seconds = 5
    llm: OperatorLlmPolicy = msgspec.field(default_factory=OperatorLlmPolicy)


class ForumTopics(_Section, frozen=True):
    command_prefix: str = "forum.commands"
    event_prefix: str = "forum.events"
    integration_prefix: str = "forum.integration"


class ForumRedis(_Section, frozen=True):
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "metawsm-forum"
    group: str = "metawsm-forum"
    consumer: str = "operator"
    embedded: str = "auto"


class ForumSla(_Section, frozen=True):
    # How long a guidance request may wait unanswered before the operator escalates it; fractions allowed.
    escalation_minutes: int | float = 30


class ForumRetention(_Section, frozen=True):
    """How long finished pipeline history is kept (docs/forum.md#retention).  Days accept fractions."""

    # forum_outbox rows that are sent and applied (commands decided, events projected everywhere).
    outbox_days: int | float = 7
    # Entries of streams nobody in this daemon consumes (integration topics); consumed streams
    # drop an entry as soon as every group has acknowledged it.
    stream_days: int | float = 7
    # forum_projection_events rows (the projections' record of what they applied; their checkpoints
    # are what makes applying idempotent) of events every projection has applied.
    ledger_days: int | float = 7
    # How often the relay's retention sweep runs (deletes go in small batches).
    sweep_seconds: Seconds = 60


class ForumPolicy(_Section, frozen=True):
    enabled: bool = True
    topics: ForumTopics = msgspec.field(default_factory=ForumTopics)
    redis: ForumRedis = msgspec.field(default_factory=ForumRedis)
    max_attempts: int = 5
    write_wait_ms: int = 5000
    heartbeat_seconds: Seconds = 15
    sla: ForumSla = msgspec.field(default_factory=ForumSla)
    docs_sync: ForumDocsSync = msgspec.field(default_factory=ForumDocsSync)
    retention: ForumRetention = msgspec.field(default_factory=ForumRetention)


class SupervisionPolicy(_Section, frozen=True):
    max_restarts: int = 5
    within_seconds: Seconds = 10
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 10000


class DebugPolicy(_Section, frozen=True):
    fault_injection: bool = False


class ApiPolicy(_Section, frozen=True):
    """Who may reach the HTTP API besides the loopback names (docs/security.md)."""

    # Extra Host header values the daemon answers to ("name" or "name:port"), e.g. a LAN name.
    allowed_hosts: list[str] = []
    # Web origins ("https://dash.example:8443") allowed to call the API from a browser (CORS).
    allowed_origins: list[str] = []
    # How long an Idempotency-Key (and the answer it repeats) is kept at least (docs/api.md).
    idempotency_ttl_hours: int | float = 24


class RunnerOptions(_Section, frozen=True):
    # ``codex`` only: start codex with ``--full-auto``. Other runners ignore it (the Go
    # version's default file sets it to false on its shell profile).
    full_auto: bool = False
    # ``shell``: the program to start (string). ``command``: an argv template, either one
    # string or a list, with ``{prompt}``/``{prompt_file}`` placeholders. ``codex``: optional
    # override of the codex invocation.
    command: str | list[str] = ""


class AgentProfile(_Section, frozen=True):
    """How to start an agent; ``name`` and ``runner`` have no sensible default, so are required."""

    name: str
    runner: str
    base_prompt: str = ""
    skills: list[str] | None = []  # the Go version writes null for none; read as []
    runner_options: RunnerOptions = msgspec.field(default_factory=RunnerOptions)
    # Give this profile's agents the metawsm MCP server (.mcp.json in the workspace, a word in
    # the prompt); false leaves both out (docs/agents.md).
    mcp: bool = True

    def __post_init__(self) -> None:
        if self.skills is None:
            msgspec.structs.force_setattr(self, "skills", [])


class AgentRef(_Section, frozen=True):
    """One agent of a run, started with the named profile."""

    name: str
    profile: str


def _default_profiles() -> list[AgentProfile]:
    return [
        AgentProfile(
            name="default-shell",
            runner="shell",
            runner_options=RunnerOptions(command="bash"),
        )
    ]


def _default_agents() -> list[AgentRef]:
    return [AgentRef(name="agent", profile="default-shell")]


class Policy(_Section, frozen=True):
    """The whole policy; field order is the order of the spec and of the written file."""

    version: int = POLICY_VERSION
    workspace: WorkspacePolicy = msgspec.field(default_factory=WorkspacePolicy)
    docs: DocsPolicy = msgspec.field(default_factory=DocsPolicy)
    tmux: TmuxPolicy = msgspec.field(default_factory=TmuxPolicy)
    execution: ExecutionPolicy = msgspec.field(default_factory=ExecutionPolicy)
    health: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    close: ClosePolicy = msgspec.field(default_factory=ClosePolicy)
    operator: OperatorPolicy = msgspec.field(default_factory=OperatorPolicy)
    forum: ForumPolicy = msgspec.field(default_factory=ForumPolicy)
    git_pr: GitPrPolicy = msgspec.field(default_factory=GitPrPolicy)
    supervision: SupervisionPolicy = msgspec.field(default_factory=SupervisionPolicy)
    debug: DebugPolicy = msgspec.field(default_factory=DebugPolicy)
    api: ApiPolicy = msgspec.field(default_factory=ApiPolicy)
    agent_profiles: list[AgentProfile] = msgspec.field(default_factory=_default_profiles)
    agents: list[AgentRef] = msgspec.field(default_factory=_default_agents)


def default_policy() -> Policy:
    """The built-in policy, used whenever no policy file exists."""
    return Policy()


# --------------------------------------------------------------------------- decoding

_AT_PATH = re.compile(r"\s+-\s+at\s+`\$(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`$")


def _friendly_type(name: str) -> str:
    # msgspec's spelling of the Seconds alias; "number" is what a JSON author thinks in.
    return {"int | float": "number", "str | array": "str or array", "array | null": "array or null"}.get(name, name)


def _rephrase_validation(text: str) -> str:
    """Turn msgspec's ``Expected `int`, got `str` - at `$.forum.x``` into ``policy: forum.x: ...``.

    msgspec's wording is precise but written for programmers (JSONPath, backticks); a policy
    author wants the dotted key they typed.
    """
    path = ""
    match = _AT_PATH.search(text)
    if match:
        path = match.group("path").lstrip(".")
        text = text[: match.start()]
    where = f" at {path}" if path else " at top level"
    if m := _UNKNOWN.match(text):
        return f'policy: unknown field "{m.group("key")}"{where}'
    if m := _MISSING.match(text):
        return f'policy: missing required field "{m.group("key")}"{where}'
    if m := _EXPECTED.match(text):
        detail = f"expected {_friendly_type(m.group('want'))}, got {m.group('got')}"
    else:
        detail = text.replace("`", "")
        detail = detail[:1].lower() + detail[1:]
    return f"policy: {path}: {detail}" if path else f"policy: {detail}"


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """Build a validated policy from plain data (e.g. a test's overrides); missing keys default."""
    try:
        policy = msgspec.convert(data, type=Policy)
    except msgspec.ValidationError as exc:
        raise PolicyError(_rephrase_validation(str(exc))) from None
    validate_policy(policy)
    return policy


class LoadedPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A policy as read from its file, with the file's fields that have no effect here."""

    policy: Policy
    path: str
    exists: bool  # False: no file at ``path``, the built-in defaults apply
    inert_fields: tuple[str, ...] = ()  # dotted paths, in the order of policy_compat.INERT_FIELDS
    digest: str = ""  # of the bytes read (see policy_digest); "" when there is no file

    @property
    def warnings(self) -> list[str]:
        """One line per inert field, for the serve log and ``policy check``."""
        return [inert_warning(field) for field in self.inert_fields]


def _decode_file(raw: bytes, file: Path) -> Policy:
    try:
        policy = msgspec.json.decode(raw, type=Policy)
    except msgspec.ValidationError as exc:
        raise PolicyError(_rephrase_validation(str(exc)), path=file) from None
    except msgspec.DecodeError as exc:
        raise PolicyError(f"policy: {file} is not valid JSON: {exc}", path=file) from None
    try:
        validate_policy(policy)
    except PolicyError as exc:
        exc.path = file
        raise
    return policy


def policy_digest(raw: bytes) -> str:
    """What tells two versions of a policy file apart (timestamps are too coarse for that)."""
    return hashlib.sha256(raw).hexdigest()


def read_policy_file(path: str | Path | None = None) -> LoadedPolicy:
    """Read, decode and validate the policy at ``path`` (default ``.metawsm/policy.json``).

    An absent file is not an error: the built-in defaults apply, so a fresh checkout works
    without running ``policy-init`` first.
    """
    file = Path(path if path is not None else DEFAULT_POLICY_PATH)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return LoadedPolicy(policy=default_policy(), path=str(file), exists=False)
    except OSError as exc:
        raise PolicyError(f"policy: cannot read {file}: {exc.strerror or exc}", path=file) from None
    policy = _decode_file(raw, file)
    # Which fields the file sets is a question about its keys: in the decoded policy every
    # field has a value.
    inert = inert_fields_in(msgspec.json.decode(raw))
    return LoadedPolicy(policy=policy, path=str(file), exists=True, inert_fields=tuple(inert),
                        digest=policy_digest(raw))


def load_policy(path: str | Path | None = None) -> Policy:
    """The validated policy at ``path`` (see :func:`read_policy_file`)."""
    return read_policy_file(path).policy


# --------------------------------------------------------------------------- validation


def _blank(value: str) -> bool:
    return not value.strip()


def _command_missing(command: str | list[str]) -> bool:
    """A command is missing when it is blank or when its argv has no program."""
    if isinstance(command, str):
        return _blank(command)
    return not command or _blank(command[0])


def _empty_values(values: list[str]) -> bool:
    return any(_blank(value) for value in values)


def _operator_failures(o: OperatorPolicy) -> Iterator[str]:
    for field in ("unhealthy_confirmations", "restart_budget", "restart_cooldown_seconds",
                  "restart_budget_reset_seconds", "stale_run_age_seconds"):
        if getattr(o, field) <= 0:
            yield f"operator.{field} must be > 0"
    # An empty list means "no command"; a list whose program is blank is a mistake, not that.
    if o.notify_command and _blank(o.notify_command[0]):
        yield "operator.notify_command must be a list of strings with a program first"
    if o.notify_timeout_seconds <= 0:
        yield "operator.notify_timeout_seconds must be > 0"
    if not _blank(o.webhook_url) and not _is_http_url(o.webhook_url):
        yield "operator.webhook_url must be an http(s) URL"
    for field in ("webhook_attempts", "webhook_timeout_seconds"):
        if getattr(o, field) <= 0:
            yield f"operator.{field} must be > 0"
    yield from operator_llm_failures(o.llm)


def _is_http_url(text: str) -> bool:
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(host)


def _failures(p: Policy) -> Iterator[str]:
    """Yield the policy's problems in the spec's order; lazily, so later checks may rely on
    earlier ones having passed."""
    if p.version <= 0:
        yield "version must be positive"

    ws = p.workspace
    if ws.default_strategy not in WORKSPACE_STRATEGIES:
        yield "workspace.default_strategy must be create|fork|reuse"
    if _blank(ws.base_branch):
        yield "workspace.base_branch cannot be empty"
    if _blank(ws.branch_prefix):
        yield "workspace.branch_prefix cannot be empty"
    if ws.provider not in WORKSPACE_PROVIDERS:
        yield "workspace.provider must be git_worktree|wsm"
    if _blank(ws.root):
        yield "workspace.root cannot be empty"

    if p.docs.provider not in DOCS_PROVIDERS:
        yield "docs.provider must be builtin|docmgr|none"
    if p.docs.seed_mode not in DOCS_SEED_MODES:
        yield "docs.seed_mode must be none|copy_from_repo_on_start"
    yield from docs_compat_failures(p.docs.authority_mode, p.docs.stale_warning_seconds, p.docs.api)

    if _blank(p.tmux.session_pattern):
        yield "tmux.session_pattern cannot be empty"
    if _blank(p.tmux.socket):
        yield "tmux.socket cannot be empty"

    if p.execution.step_retries < 0:
        yield "execution.step_retries must be >= 0"
    if p.execution.max_tickets_per_run <= 0:
        yield "execution.max_tickets_per_run must be > 0"

    h = p.health
    if h.poll_seconds <= 0:
        yield "health.poll_seconds must be > 0"
    if h.quiet_poll_seconds < h.poll_seconds:
        yield "health.quiet_poll_seconds must be >= poll_seconds"
    if min(h.idle_seconds, h.activity_stalled_seconds, h.progress_stalled_seconds) <= 0:
        yield "health thresholds must be > 0"
    if h.activity_stalled_seconds < h.idle_seconds:
        yield "activity_stalled_seconds must be >= idle_seconds"

    yield from _operator_failures(p.operator)

    f = p.forum
    for field in ("command_prefix", "event_prefix", "integration_prefix"):
        if _blank(getattr(f.topics, field)):
            yield f"forum.topics.{field} cannot be empty"
    # With a private Redis the URL is never dialled, so it may be left empty.
    if _blank(f.redis.url) and f.redis.embedded != "always":
        yield "forum.redis.url cannot be empty"
    for field in ("stream", "group", "consumer"):
        if _blank(getattr(f.redis, field)):
            yield f"forum.redis.{field} cannot be empty"
    if f.redis.embedded not in REDIS_EMBEDDED_MODES:
        yield "forum.redis.embedded must be auto|always|never"
    for field in ("max_attempts", "write_wait_ms", "heartbeat_seconds"):
        if getattr(f, field) <= 0:
            yield f"forum.{field} must be > 0"
    if f.sla.escalation_minutes <= 0:
        yield "forum.sla.escalation_minutes must be > 0"
    for field in ("outbox_days", "stream_days", "ledger_days", "sweep_seconds"):
        if getattr(f.retention, field) <= 0:
            yield f"forum.retention.{field} must be > 0"

    yield from git_pr_failures(p.git_pr)

    s = p.supervision
    for field in ("max_restarts", "within_seconds", "backoff_initial_ms", "backoff_max_ms"):
        if getattr(s, field) <= 0:
            yield f"supervision.{field} must be > 0"
    if s.backoff_max_ms < s.backoff_initial_ms:
        yield "supervision.backoff_max_ms must be >= backoff_initial_ms"

    for host in p.api.allowed_hosts:
        if _blank(host) or "/" in host or any(c.isspace() for c in host.strip()):
            yield f'api.allowed_hosts entry "{host}" must be a host name or host:port'
    for origin in p.api.allowed_origins:
        if not _is_origin(origin):
            yield f'api.allowed_origins entry "{origin}" must be an origin such as https://host:port'
    if p.api.idempotency_ttl_hours <= 0:
        yield "api.idempotency_ttl_hours must be > 0"

    if not p.agent_profiles:
        yield "agent_profiles must contain at least one entry"
    profiles: set[str] = set()
    for index, profile in enumerate(p.agent_profiles):
        name = profile.name.strip()
        if not name:
            yield f"agent_profiles[{index}].name cannot be empty"
        if name in profiles:
            yield f'duplicate agent profile "{name}"'
        profiles.add(name)
        if profile.runner == "codex" and _blank(profile.base_prompt):
            yield f'agent profile "{name}" requires non-empty base_prompt for codex runner'
        if profile.runner in RUNNERS_NEEDING_COMMAND:
            if _command_missing(profile.runner_options.command):
                yield (f'agent profile "{name}" requires runner_options.command '
                       f"for {profile.runner} runner")
        elif profile.runner not in SUPPORTED_RUNNERS:
            yield f'agent profile "{name}" has unsupported runner "{profile.runner}"'
        if _empty_values(profile.skills or []):
            yield f'agent profile "{name}" has empty skill name'

    if not p.agents:
        yield "agents must contain at least one entry"
    agents: set[str] = set()
    for index, agent in enumerate(p.agents):
        name = agent.name.strip()
        if not name:
            yield f"agents[{index}].name cannot be empty"
        if name in agents:
            yield f'duplicate agent "{name}"'
        agents.add(name)
        if agent.profile.strip() not in profiles:
            yield f'agent "{name}" references unknown profile "{agent.profile}"'


def _is_origin(text: str) -> bool:
    """``scheme://host[:port]`` and nothing else: an origin has no path, query or user."""
    try:
        parts = urlsplit(text.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")
            and not parts.query and not parts.fragment and "@" not in parts.netloc)


def validate_policy(policy: Policy) -> None:
    """Raise :class:`PolicyError` with the first rule the policy breaks (spec order)."""
    for problem in _failures(policy):
        raise PolicyError(problem)


# --------------------------------------------------------------------------- writing


def encode_policy(policy: Policy) -> bytes:
    """Pretty JSON (2-space indent, trailing newline) with sections in spec order."""
    return msgspec.json.format(msgspec.json.encode(policy), indent=2) + b"\n"


def policy_file_bytes(policy: Policy) -> bytes:
    """The policy as ``policy-init`` writes it: like :func:`encode_policy`, without the fields
    that have no effect here (so a fresh file never warns about itself)."""
    data = without_inert_fields(msgspec.to_builtins(policy))
    return msgspec.json.format(msgspec.json.encode(data), indent=2) + b"\n"


def write_default_policy(path: str | Path | None = None, force: bool = False) -> Path:
    """Write the default policy to ``path``, creating parent directories.

    Refuses to replace an existing file unless ``force``, because the file is usually hand
    edited. The write goes through a temporary file and a rename, so a crash never leaves a
    half-written policy behind for the next ``serve`` to choke on.
    """
    file = Path(path if path is not None else DEFAULT_POLICY_PATH)
    if file.is_dir():
        raise PolicyError(f"policy path {file} is a directory", path=file)
    if file.exists() and not force:
        raise PolicyError(f"policy file {file} already exists; use --force to overwrite", path=file)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(policy_file_bytes(default_policy()))
            os.chmod(tmp, 0o644)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PolicyError(f"cannot write policy {file}: {exc.strerror or exc}", path=file) from None
    return file


# --------------------------------------------------------------------------- display helpers

# ``redacted_redis_url(url)``: the URL with any password masked (userinfo or ``?password=``);
# the one implementation is metawsm/redact.py, shared with the transport's error messages.
redacted_redis_url = redact_url


def redacted_policy(policy: Policy) -> Policy:
    """The policy with the Redis password masked, for the API and for what is stored per run."""
    redis = policy.forum.redis
    masked = msgspec.structs.replace(redis, url=redacted_redis_url(redis.url))
    return msgspec.structs.replace(policy, forum=msgspec.structs.replace(policy.forum, redis=masked))


# --------------------------------------------------------------------------- changes between two policies

# Sections the running daemon built its actors from: a new value needs a restart of serve.
# Every other field is read when a run is planned, and the run keeps it for its whole life.
RESTART_SECTIONS = ("forum", "supervision", "debug", "api")
APPLIES_TEXT = {"next_run": "next run", "restart": "restart serve", "no_effect": "no effect here"}
_INDEX = re.compile(r"\[\d+\]")


class PolicyChange(msgspec.Struct, frozen=True, kw_only=True):
    field: str  # dotted path, list entries as ``[i]``
    before: Any = msgspec.field(name="from")  # plain JSON value; None when absent
    after: Any = msgspec.field(name="to")
    applies: str  # next_run | restart | no_effect (see APPLIES_TEXT)


def change_applies(field: str) -> str:
    """When a change of ``field`` takes effect: next_run, restart or no_effect."""
    generic = _INDEX.sub("[]", field)
    if any(generic == inert or generic.startswith((inert + ".", inert + "[")) for inert in INERT_FIELDS):
        return "no_effect"
    return "restart" if re.split(r"[.\[]", field, maxsplit=1)[0] in RESTART_SECTIONS else "next_run"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _differences(before: Any, after: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    if before == after:
        return
    if isinstance(before, dict) and isinstance(after, dict):
        for key in [*before, *(k for k in after if k not in before)]:
            yield from _differences(before.get(key), after.get(key), _join(path, key))
        return
    # Lists of objects of the same length (profiles, agents) are compared entry by entry; any
    # other list is one value, so a longer list reads as one change rather than a dozen.
    if (isinstance(before, list) and isinstance(after, list) and len(before) == len(after)
            and any(isinstance(item, dict) for item in [*before, *after])):
        for index, (old, new) in enumerate(zip(before, after)):
            yield from _differences(old, new, f"{path}[{index}]")
        return
    yield path, before, after


def policy_changes(before: Policy | Mapping[str, Any], after: Policy | Mapping[str, Any]) -> list[PolicyChange]:
    """Every field whose value differs, in schema order. Accepts policies or their plain JSON
    (what ``GET /api/v1/policy`` returns)."""
    old = msgspec.to_builtins(before) if isinstance(before, Policy) else before
    new = msgspec.to_builtins(after) if isinstance(after, Policy) else after
    return [PolicyChange(field=field, before=a, after=b, applies=change_applies(field))
            for field, a, b in _differences(old, new, "")]


def with_sections_of(policy: Policy, running: Policy, sections: tuple[str, ...] = RESTART_SECTIONS) -> Policy:
    """``policy`` with ``sections`` taken from ``running``: what a daemon that re-read its file
    actually applies, since the restart-only sections stay as they were at start."""
    return msgspec.structs.replace(policy, **{name: getattr(running, name) for name in sections})
