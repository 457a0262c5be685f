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
"""

from __future__ import annotations

from metawsm.defaults import DEFAULT_DB_PATH, DEFAULT_POLICY_PATH

import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec

__all__ = [
    "DEFAULT_DB_PATH",
    "DEFAULT_POLICY_PATH",
    "POLICY_VERSION",
    "AgentProfile",
    "AgentRef",
    "DebugPolicy",
    "DocsPolicy",
    "ExecutionPolicy",
    "ForumPolicy",
    "ForumRedis",
    "ForumSla",
    "ForumTopics",
    "HealthPolicy",
    "OperatorPolicy",
    "Policy",
    "PolicyError",
    "RunnerOptions",
    "SupervisionPolicy",
    "TmuxPolicy",
    "WorkspacePolicy",
    "default_policy",
    "encode_policy",
    "load_policy",
    "policy_from_mapping",
    "redacted_redis_url",
    "validate_policy",
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


class WorkspacePolicy(_Section):
    default_strategy: str = "create"
    branch_prefix: str = "task"
    base_branch: str = "main"
    provider: str = "git_worktree"
    root: str = ".metawsm/workspaces"
    # Repo name -> source repository path, consulted before the current/sibling directory.
    repo_sources: dict[str, str] = {}


class DocsPolicy(_Section):
    provider: str = "builtin"
    seed_mode: str = "copy_from_repo_on_start"


class TmuxPolicy(_Section):
    socket: str = "metawsm"
    session_pattern: str = "{agent}-{workspace}"


class ExecutionPolicy(_Section):
    step_retries: int = 1


class HealthPolicy(_Section):
    poll_seconds: Seconds = 2
    idle_seconds: Seconds = 300
    activity_stalled_seconds: Seconds = 900
    progress_stalled_seconds: Seconds = 1200


class OperatorPolicy(_Section):
    unhealthy_confirmations: int = 2
    restart_budget: int = 3
    restart_cooldown_seconds: Seconds = 60
    restart_budget_reset_seconds: Seconds = 1800
    restart_stalled: bool = False


class ForumTopics(_Section):
    command_prefix: str = "forum.commands"
    event_prefix: str = "forum.events"
    integration_prefix: str = "forum.integration"


class ForumRedis(_Section):
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "metawsm-forum"
    group: str = "metawsm-forum"
    consumer: str = "operator"
    embedded: str = "auto"


class ForumSla(_Section):
    escalation_minutes: int = 30


class ForumPolicy(_Section):
    enabled: bool = True
    topics: ForumTopics = msgspec.field(default_factory=ForumTopics)
    redis: ForumRedis = msgspec.field(default_factory=ForumRedis)
    max_attempts: int = 5
    write_wait_ms: int = 5000
    heartbeat_seconds: Seconds = 15
    sla: ForumSla = msgspec.field(default_factory=ForumSla)


class SupervisionPolicy(_Section):
    max_restarts: int = 5
    within_seconds: Seconds = 10
    backoff_initial_ms: int = 100
    backoff_max_ms: int = 10000


class DebugPolicy(_Section):
    fault_injection: bool = False


class RunnerOptions(_Section):
    # ``shell``: the program to start (string). ``command``: an argv template, either one
    # string or a list, with ``{prompt}``/``{prompt_file}`` placeholders. ``codex``: optional
    # override of the codex invocation.
    command: str | list[str] = ""


class AgentProfile(_Section):
    """How to start an agent; ``name`` and ``runner`` have no sensible default, so are required."""

    name: str
    runner: str
    base_prompt: str = ""
    skills: list[str] = []
    runner_options: RunnerOptions = msgspec.field(default_factory=RunnerOptions)


class AgentRef(_Section):
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


class Policy(_Section):
    """The whole policy; field order is the order of the spec and of the written file."""

    version: int = POLICY_VERSION
    workspace: WorkspacePolicy = msgspec.field(default_factory=WorkspacePolicy)
    docs: DocsPolicy = msgspec.field(default_factory=DocsPolicy)
    tmux: TmuxPolicy = msgspec.field(default_factory=TmuxPolicy)
    execution: ExecutionPolicy = msgspec.field(default_factory=ExecutionPolicy)
    health: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    operator: OperatorPolicy = msgspec.field(default_factory=OperatorPolicy)
    forum: ForumPolicy = msgspec.field(default_factory=ForumPolicy)
    supervision: SupervisionPolicy = msgspec.field(default_factory=SupervisionPolicy)
    debug: DebugPolicy = msgspec.field(default_factory=DebugPolicy)
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
    return {"int | float": "number", "str | array": "str or array"}.get(name, name)


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


def load_policy(path: str | Path | None = None) -> Policy:
    """Read, decode and validate the policy at ``path`` (default ``.metawsm/policy.json``).

    An absent file is not an error: the built-in defaults apply, so a fresh checkout works
    without running ``policy-init`` first.
    """
    file = Path(path if path is not None else DEFAULT_POLICY_PATH)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        return default_policy()
    except OSError as exc:
        raise PolicyError(f"policy: cannot read {file}: {exc.strerror or exc}", path=file) from None
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


# --------------------------------------------------------------------------- validation


def _blank(value: str) -> bool:
    return not value.strip()


def _command_missing(command: str | list[str]) -> bool:
    """A command is missing when it is blank or when its argv has no program."""
    if isinstance(command, str):
        return _blank(command)
    return not command or _blank(command[0])


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

    if _blank(p.tmux.session_pattern):
        yield "tmux.session_pattern cannot be empty"
    if _blank(p.tmux.socket):
        yield "tmux.socket cannot be empty"

    if p.execution.step_retries < 0:
        yield "execution.step_retries must be >= 0"

    h = p.health
    if h.poll_seconds <= 0:
        yield "health.poll_seconds must be > 0"
    if min(h.idle_seconds, h.activity_stalled_seconds, h.progress_stalled_seconds) <= 0:
        yield "health thresholds must be > 0"
    if h.activity_stalled_seconds < h.idle_seconds:
        yield "activity_stalled_seconds must be >= idle_seconds"

    for field in ("unhealthy_confirmations", "restart_budget", "restart_cooldown_seconds",
                  "restart_budget_reset_seconds"):
        if getattr(p.operator, field) <= 0:
            yield f"operator.{field} must be > 0"

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

    s = p.supervision
    for field in ("max_restarts", "within_seconds", "backoff_initial_ms", "backoff_max_ms"):
        if getattr(s, field) <= 0:
            yield f"supervision.{field} must be > 0"
    if s.backoff_max_ms < s.backoff_initial_ms:
        yield "supervision.backoff_max_ms must be >= backoff_initial_ms"

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
        if profile.runner in RUNNERS_NEEDING_COMMAND:
            if _command_missing(profile.runner_options.command):
                yield (f'agent profile "{name}" requires runner_options.command '
                       f"for {profile.runner} runner")
        elif profile.runner not in SUPPORTED_RUNNERS:
            yield f'agent profile "{name}" has unsupported runner "{profile.runner}"'

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


def validate_policy(policy: Policy) -> None:
    """Raise :class:`PolicyError` with the first rule the policy breaks (spec order)."""
    for problem in _failures(policy):
        raise PolicyError(problem)


# --------------------------------------------------------------------------- writing


def encode_policy(policy: Policy) -> bytes:
    """Pretty JSON (2-space indent, trailing newline) with sections in spec order."""
    return msgspec.json.format(msgspec.json.encode(policy), indent=2) + b"\n"


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
                out.write(encode_policy(default_policy()))
            os.chmod(tmp, 0o644)
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PolicyError(f"cannot write policy {file}: {exc.strerror or exc}", path=file) from None
    return file


# --------------------------------------------------------------------------- display helpers

_MASK = "***"


def redacted_redis_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0``.

    Health output and logs show which Redis is used; they must not show its password, whether
    it sits in the userinfo or in a ``?password=`` query parameter (unix socket URLs).
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
        hostinfo = parts.netloc.rpartition("@")[2]
    except ValueError:
        # Unparseable: keep only the scheme rather than risk echoing a secret.
        scheme = url.partition("://")[0] if "://" in url else ""
        return f"{scheme}://{_MASK}" if scheme else _MASK
    netloc = parts.netloc
    if password is not None:
        netloc = f"{username or ''}:{_MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            masked = [(k, _MASK if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    # Reassembled by hand: urlunsplit would turn ``unix:///path`` into ``unix:/path``.
    text = f"{parts.scheme}:" if parts.scheme else ""
    if netloc or url.startswith(text + "//"):
        text += f"//{netloc}"
    text += parts.path
    if query:
        text += f"?{query}"
    if parts.fragment:
        text += f"#{parts.fragment}"
    return text
