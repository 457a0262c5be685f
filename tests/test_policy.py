"""The policy contract (docs/policy.md): defaults, decoding errors, every validation message.

Compatibility with the Go version's policies is in test_policy_go.py."""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from metawsm.cli.main import cli
from metawsm.policy import (
    DEFAULT_DB_PATH,
    DEFAULT_POLICY_PATH,
    Policy,
    PolicyError,
    default_policy,
    encode_policy,
    load_policy,
    policy_file_bytes,
    policy_from_mapping,
    redacted_redis_url,
    validate_policy,
    write_default_policy,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# The defaults exactly as docs/policy.md lists them (the Go version's fields included).
SPEC_DEFAULTS: dict[str, Any] = {
    "version": 2,
    "workspace": {"default_strategy": "create", "branch_prefix": "task", "base_branch": "main",
                  "provider": "git_worktree", "root": ".metawsm/workspaces", "repo_sources": {}},
    "docs": {"provider": "builtin", "seed_mode": "copy_from_repo_on_start",
             "authority_mode": "workspace_active", "stale_warning_seconds": 900,
             "api": {"workspace_endpoints": [], "repo_endpoints": [], "request_timeout_seconds": 3}},
    "tmux": {"socket": "auto", "session_pattern": "{agent}-{workspace}"},
    "execution": {"step_retries": 1, "max_tickets_per_run": 10},
    "health": {"poll_seconds": 2, "quiet_poll_seconds": 10, "idle_seconds": 300, "activity_stalled_seconds": 900,
               "progress_stalled_seconds": 1200},
    "close": {"require_clean_git": True},
    "operator": {"unhealthy_confirmations": 2, "restart_budget": 3,
                 "restart_cooldown_seconds": 60, "restart_budget_reset_seconds": 1800,
                 "restart_stalled": False, "stale_run_age_seconds": 3600,
                 "notify_command": [], "notify_timeout_seconds": 10, "webhook_url": "",
                 "webhook_attempts": 5, "webhook_timeout_seconds": 5,
                 "llm": {"mode": "off", "command": "codex", "model": "", "timeout_seconds": 30,
                         "max_tokens": 400}},
    "forum": {"enabled": True,
              "topics": {"command_prefix": "forum.commands", "event_prefix": "forum.events",
                         "integration_prefix": "forum.integration"},
              "redis": {"url": "redis://127.0.0.1:6379/0", "stream": "metawsm-forum",
                        "group": "metawsm-forum", "consumer": "operator", "embedded": "auto"},
              "max_attempts": 5, "write_wait_ms": 5000, "heartbeat_seconds": 15,
              "sla": {"escalation_minutes": 30}, "docs_sync": {"enabled": True},
              "retention": {"outbox_days": 7, "stream_days": 7, "ledger_days": 7, "sweep_seconds": 60}},
    "git_pr": {"mode": "assist", "provider": "auto", "credential_mode": "local_user_auth",
               "branch_template": "{ticket}/{repo}/{run}",
               "require_all": True, "required_checks": ["tests", "forbidden_files", "ticket_workflow", "clean_tree"],
               "test_commands": [],
               "forbidden_file_patterns": [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa",
                                           "id_ed25519"],
               "allowed_repos": [], "default_labels": [], "default_reviewers": [],
               "review_feedback": {"enabled": False, "mode": "assist", "include_review_comments": True,
                                   "ignore_authors": [], "max_items_per_sync": 50,
                                   "auto_dispatch_cap_per_interval": 1}},
    "supervision": {"max_restarts": 5, "within_seconds": 10, "backoff_initial_ms": 100,
                    "backoff_max_ms": 10000},
    "debug": {"fault_injection": False},
    "api": {"allowed_hosts": [], "allowed_origins": [], "idempotency_ttl_hours": 24},
    "agent_profiles": [{"name": "default-shell", "runner": "shell", "base_prompt": "",
                        "skills": [], "runner_options": {"full_auto": False, "command": "bash"}, "mcp": True}],
    "agents": [{"name": "agent", "profile": "default-shell"}],
}
# Sections policy-init leaves out: every field in them has no effect here yet (git_pr is written
# with the fields `metawsm commit` honours).
INERT_SECTIONS = ("close",)


def mutated(changes: dict[str, Any]) -> dict[str, Any]:
    """The default policy as plain data with dotted-path keys replaced."""
    data = copy.deepcopy(SPEC_DEFAULTS)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


def unvalidated(data: dict[str, Any]) -> Policy:
    """Decode without validating, so validate_policy itself is what the test exercises."""
    return msgspec.convert(data, type=Policy)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def shell_profile(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "runner": "shell", "runner_options": {"command": "bash"}, **extra}


def endpoint(**fields: str) -> dict[str, str]:
    """A valid docs API endpoint (add ``workspace`` for a workspace endpoint), with overrides."""
    return {"name": "d1", "base_url": "http://127.0.0.1:8710", "repo": "app", **fields}


# --------------------------------------------------------------------------- defaults and loading


def test_defaults_match_spec() -> None:
    assert msgspec.to_builtins(default_policy()) == SPEC_DEFAULTS
    validate_policy(default_policy())
    assert DEFAULT_POLICY_PATH == ".metawsm/policy.json"
    assert DEFAULT_DB_PATH == ".metawsm/metawsm.db"


def test_absent_file_means_defaults(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "missing" / "policy.json") == default_policy()


def test_default_path_is_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_policy(None) == default_policy()
    (tmp_path / ".metawsm").mkdir()
    write_json(tmp_path / ".metawsm" / "policy.json", {"forum": {"max_attempts": 7}})
    assert load_policy(None).forum.max_attempts == 7


def test_missing_sections_and_keys_get_defaults(tmp_path: Path) -> None:
    path = write_json(tmp_path / "p.json", {"forum": {"redis": {"stream": "s2"}}, "health": {}})
    policy = load_policy(path)
    assert policy.forum.redis.stream == "s2"
    assert policy.forum.redis.group == "metawsm-forum"
    assert policy.forum.max_attempts == 5
    assert policy.health == default_policy().health
    assert policy.agents == default_policy().agents
    assert load_policy(write_json(tmp_path / "empty.json", {})) == default_policy()


def test_fractional_seconds_are_accepted(tmp_path: Path) -> None:
    policy = load_policy(write_json(tmp_path / "p.json", {"health": {"poll_seconds": 0.05}}))
    assert policy.health.poll_seconds == 0.05


def test_retention_days_accept_fractions(tmp_path: Path) -> None:
    retention = {"outbox_days": 0.5, "stream_days": 0.25, "ledger_days": 1.5 / 86400}
    policy = load_policy(write_json(tmp_path / "p.json", {"forum": {"retention": retention}}))
    assert policy.forum.retention.ledger_days == 1.5 / 86400
    assert policy.forum.retention.outbox_days == 0.5
    assert policy_from_mapping({"forum": {"retention": {"ledger_days": 7}}}).forum.retention.ledger_days == 7


def test_round_trip_write_then_load(tmp_path: Path) -> None:
    path = write_default_policy(tmp_path / "nested" / "dir" / "policy.json", force=False)
    assert path == tmp_path / "nested" / "dir" / "policy.json"
    raw = path.read_bytes()
    assert raw == policy_file_bytes(default_policy())
    assert raw.endswith(b"}\n")
    assert b'\n  "workspace": {\n    "default_strategy": "create",' in raw
    # Sections in spec order, without the ones that only hold fields with no effect here.
    assert list(json.loads(raw)) == [name for name in SPEC_DEFAULTS if name not in INERT_SECTIONS]
    assert load_policy(path) == default_policy()


def test_encode_policy_writes_every_field_in_spec_order() -> None:
    assert json.loads(encode_policy(default_policy())) == SPEC_DEFAULTS
    assert list(json.loads(encode_policy(default_policy()))) == list(SPEC_DEFAULTS)


def test_write_refuses_existing_without_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text("{}")
    with pytest.raises(PolicyError) as err:
        write_default_policy(path, force=False)
    assert str(err.value) == f"policy file {path} already exists; use --force to overwrite"
    assert path.read_text() == "{}"
    write_default_policy(path, force=True)
    assert load_policy(path) == default_policy()


def test_policy_from_mapping_validates() -> None:
    assert policy_from_mapping({"tmux": {"socket": "t1"}}).tmux.socket == "t1"
    assert policy_from_mapping({}).tmux.socket == "auto"
    with pytest.raises(PolicyError, match="^tmux.socket cannot be empty$"):
        policy_from_mapping({"tmux": {"socket": " "}})


def test_policy_is_immutable() -> None:
    with pytest.raises(AttributeError):
        default_policy().forum.max_attempts = 1  # type: ignore[misc]  # the test checks that this assignment fails


# --------------------------------------------------------------------------- decode errors


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"version": 2,')
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value).startswith(f"policy: {path} is not valid JSON: ")
    assert "\n" not in str(err.value)
    assert err.value.path == path


def test_unreadable_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="^policy: cannot read "):
        load_policy(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"foo": 1}, 'policy: unknown field "foo" at top level'),
        ({"forum": {"redis": {"foo": 1}}}, 'policy: unknown field "foo" at forum.redis'),
        ({"health": {"poll_secs": 1}}, 'policy: unknown field "poll_secs" at health'),
        ({"agent_profiles": [shell_profile("p", colour="red")], "agents": []},
         'policy: unknown field "colour" at agent_profiles[0]'),
        ({"agent_profiles": [{"name": "p", "runner": "shell", "runner_options": {"cmd": "x"}}]},
         'policy: unknown field "cmd" at agent_profiles[0].runner_options'),
        # In neither this schema nor the Go version's: still an error, with its path.
        ({"git_pr": {"auto_merge": True}}, 'policy: unknown field "auto_merge" at git_pr'),
        ({"git_pr": {"review_feedback": {"notify": True}}},
         'policy: unknown field "notify" at git_pr.review_feedback'),
        ({"operator": {"llm": {"temperature": 0}}}, 'policy: unknown field "temperature" at operator.llm'),
        ({"close": {"force": True}}, 'policy: unknown field "force" at close'),
        ({"docs": {"api": {"repo_endpoints": [{"name": "d", "token": "t"}]}}},
         'policy: unknown field "token" at docs.api.repo_endpoints[0]'),
        ({"forum": {"docs_sync": {"interval": 5}}}, 'policy: unknown field "interval" at forum.docs_sync'),
    ],
)
def test_unknown_keys_name_key_and_path(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(write_json(tmp_path / "p.json", data))
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"forum": {"max_attempts": "5"}}, "policy: forum.max_attempts: expected int, got str"),
        ({"version": 2.5}, "policy: version: expected int, got float"),
        ({"debug": {"fault_injection": "yes"}},
         "policy: debug.fault_injection: expected bool, got str"),
        ({"health": {"poll_seconds": "2"}}, "policy: health.poll_seconds: expected number, got str"),
        ({"forum": {"redis": None}}, "policy: forum.redis: expected object, got null"),
        ({"workspace": {"repo_sources": {"r": 1}}},
         "policy: workspace.repo_sources[...]: expected str, got int"),
        ({"agents": [{"name": 3, "profile": "default-shell"}]},
         "policy: agents[0].name: expected str, got int"),
        ({"agents": [{"name": "a"}]}, 'policy: missing required field "profile" at agents[0]'),
        ([1, 2], "policy: expected object, got array"),
        ({"docs": {"api": {"workspace_endpoints": {}}}},
         "policy: docs.api.workspace_endpoints: expected array or null, got object"),
        ({"git_pr": {"required_checks": "tests"}}, "policy: git_pr.required_checks: expected array, got str"),
    ],
)
def test_wrong_types_name_the_field_path(tmp_path: Path, data: Any, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(write_json(tmp_path / "p.json", data))
    assert str(err.value) == message


# --------------------------------------------------------------------------- validation messages

# In the order of spec/policy.md (then the documented extras in their place): the mutation of
# the default policy, and the exact first-failure message it must produce.
CASES: list[tuple[dict[str, Any], str]] = [
    ({"version": 0}, "version must be positive"),
    ({"workspace.default_strategy": "clone"}, "workspace.default_strategy must be create|fork|reuse"),
    ({"workspace.base_branch": " "}, "workspace.base_branch cannot be empty"),
    ({"workspace.branch_prefix": ""}, "workspace.branch_prefix cannot be empty"),
    ({"workspace.provider": "svn"}, "workspace.provider must be git_worktree|wsm"),
    ({"workspace.root": ""}, "workspace.root cannot be empty"),
    ({"docs.provider": "wiki"}, "docs.provider must be builtin|docmgr|none"),
    ({"docs.seed_mode": "copy"}, "docs.seed_mode must be none|copy_from_repo_on_start"),
    ({"docs.authority_mode": " "}, "docs.authority_mode cannot be empty"),
    ({"docs.authority_mode": "repo_first"}, 'docs.authority_mode must be "workspace_active"'),
    ({"docs.stale_warning_seconds": 0}, "docs.stale_warning_seconds must be > 0"),
    ({"docs.api.request_timeout_seconds": -1}, "docs.api.request_timeout_seconds must be > 0"),
    # Endpoints: the workspace list is checked before the repo list, each endpoint field by field.
    ({"docs.api.workspace_endpoints": [endpoint(name=" ", workspace="w")]},
     "docs.api.workspace_endpoints.name cannot be empty"),
    ({"docs.api.workspace_endpoints": [endpoint(base_url="http://", workspace="w")]},
     'docs.api endpoint "d1" has invalid base_url "http://"'),
    ({"docs.api.workspace_endpoints": [endpoint()]}, 'docs.api workspace endpoint "d1" requires workspace'),
    ({"docs.api.workspace_endpoints": [endpoint(name="notes", workspace="w")],
      "docs.api.repo_endpoints": [endpoint(name="notes")]}, 'duplicate docs API endpoint name "notes"'),
    ({"docs.api.repo_endpoints": [endpoint(name="")]}, "docs.api.repo_endpoints.name cannot be empty"),
    ({"docs.api.repo_endpoints": [endpoint(base_url=" ")]}, 'docs.api endpoint "d1" base_url cannot be empty'),
    ({"docs.api.repo_endpoints": [endpoint(base_url="ftp://docs.test")]},
     'docs.api endpoint "d1" has invalid base_url "ftp://docs.test"'),
    ({"docs.api.repo_endpoints": [endpoint(web_url="docs.test/ui")]},
     'docs.api endpoint "d1" has invalid web_url "docs.test/ui"'),
    ({"docs.api.repo_endpoints": [endpoint(repo="")]}, 'docs.api endpoint "d1" repo cannot be empty'),
    ({"tmux.session_pattern": ""}, "tmux.session_pattern cannot be empty"),
    ({"tmux.socket": ""}, "tmux.socket cannot be empty"),
    ({"execution.step_retries": -1}, "execution.step_retries must be >= 0"),
    ({"execution.max_tickets_per_run": 0}, "execution.max_tickets_per_run must be > 0"),
    ({"health.poll_seconds": 0}, "health.poll_seconds must be > 0"),
    ({"health.quiet_poll_seconds": 1}, "health.quiet_poll_seconds must be >= poll_seconds"),
    ({"health.idle_seconds": 0}, "health thresholds must be > 0"),
    ({"health.activity_stalled_seconds": -5}, "health thresholds must be > 0"),
    ({"health.progress_stalled_seconds": 0}, "health thresholds must be > 0"),
    ({"health.activity_stalled_seconds": 299}, "activity_stalled_seconds must be >= idle_seconds"),
    ({"operator.unhealthy_confirmations": 0}, "operator.unhealthy_confirmations must be > 0"),
    ({"operator.restart_budget": 0}, "operator.restart_budget must be > 0"),
    ({"operator.restart_cooldown_seconds": 0}, "operator.restart_cooldown_seconds must be > 0"),
    ({"operator.restart_budget_reset_seconds": -1},
     "operator.restart_budget_reset_seconds must be > 0"),
    ({"operator.stale_run_age_seconds": 0}, "operator.stale_run_age_seconds must be > 0"),
    ({"operator.notify_command": [" ", "x"]},
     "operator.notify_command must be a list of strings with a program first"),
    ({"operator.notify_timeout_seconds": 0}, "operator.notify_timeout_seconds must be > 0"),
    ({"operator.webhook_url": "ftp://hooks.test/x"}, "operator.webhook_url must be an http(s) URL"),
    ({"operator.webhook_url": "hooks.test/x"}, "operator.webhook_url must be an http(s) URL"),
    ({"operator.webhook_attempts": 0}, "operator.webhook_attempts must be > 0"),
    ({"operator.webhook_timeout_seconds": -1}, "operator.webhook_timeout_seconds must be > 0"),
    ({"operator.llm.mode": "manual"}, "operator.llm.mode must be off|assist|auto"),
    ({"operator.llm.command": " "}, "operator.llm.command cannot be empty"),
    ({"operator.llm.command": []}, "operator.llm.command cannot be empty"),
    ({"operator.llm.command": ["", "-q"]}, "operator.llm.command cannot be empty"),
    ({"operator.llm.timeout_seconds": 0}, "operator.llm.timeout_seconds must be > 0"),
    ({"operator.llm.max_tokens": 0}, "operator.llm.max_tokens must be > 0"),
    ({"forum.topics.command_prefix": ""}, "forum.topics.command_prefix cannot be empty"),
    ({"forum.topics.event_prefix": " "}, "forum.topics.event_prefix cannot be empty"),
    ({"forum.topics.integration_prefix": ""}, "forum.topics.integration_prefix cannot be empty"),
    ({"forum.redis.url": ""}, "forum.redis.url cannot be empty"),
    ({"forum.redis.stream": ""}, "forum.redis.stream cannot be empty"),
    ({"forum.redis.group": ""}, "forum.redis.group cannot be empty"),
    ({"forum.redis.consumer": ""}, "forum.redis.consumer cannot be empty"),
    ({"forum.redis.embedded": "sometimes"}, "forum.redis.embedded must be auto|always|never"),
    ({"forum.max_attempts": 0}, "forum.max_attempts must be > 0"),
    ({"forum.write_wait_ms": 0}, "forum.write_wait_ms must be > 0"),
    ({"forum.heartbeat_seconds": 0}, "forum.heartbeat_seconds must be > 0"),
    ({"forum.sla.escalation_minutes": 0}, "forum.sla.escalation_minutes must be > 0"),
    ({"forum.retention.outbox_days": 0}, "forum.retention.outbox_days must be > 0"),
    ({"forum.retention.stream_days": -1}, "forum.retention.stream_days must be > 0"),
    ({"forum.retention.ledger_days": 0}, "forum.retention.ledger_days must be > 0"),
    ({"forum.retention.sweep_seconds": 0}, "forum.retention.sweep_seconds must be > 0"),
    ({"git_pr.mode": "always"}, "git_pr.mode must be off|assist|auto"),
    ({"git_pr.credential_mode": "token"}, "git_pr.credential_mode must be local_user_auth"),
    ({"git_pr.branch_template": " "}, "git_pr.branch_template cannot be empty"),
    ({"git_pr.required_checks": ["tests", " "]}, "git_pr.required_checks cannot contain empty values"),
    ({"git_pr.required_checks": ["tests", "lint"]}, 'git_pr.required_checks contains unsupported check "lint"'),
    ({"git_pr.test_commands": [""]}, "git_pr.test_commands cannot contain empty values"),
    ({"git_pr.forbidden_file_patterns": ["*.pem", ""]}, "git_pr.forbidden_file_patterns cannot contain empty values"),
    ({"git_pr.allowed_repos": [" "]}, "git_pr.allowed_repos cannot contain empty values"),
    ({"git_pr.default_labels": [""]}, "git_pr.default_labels cannot contain empty values"),
    ({"git_pr.default_reviewers": [""]}, "git_pr.default_reviewers cannot contain empty values"),
    ({"git_pr.review_feedback.mode": "off"}, "git_pr.review_feedback.mode must be assist|auto"),
    ({"git_pr.review_feedback.include_review_comments": False},
     "git_pr.review_feedback.include_review_comments must be true for V1"),
    ({"git_pr.review_feedback.ignore_authors": [""]},
     "git_pr.review_feedback.ignore_authors cannot contain empty values"),
    ({"git_pr.review_feedback.max_items_per_sync": 0}, "git_pr.review_feedback.max_items_per_sync must be > 0"),
    ({"git_pr.review_feedback.auto_dispatch_cap_per_interval": 0},
     "git_pr.review_feedback.auto_dispatch_cap_per_interval must be > 0"),
    ({"supervision.max_restarts": 0}, "supervision.max_restarts must be > 0"),
    ({"supervision.within_seconds": 0}, "supervision.within_seconds must be > 0"),
    ({"supervision.backoff_initial_ms": 0}, "supervision.backoff_initial_ms must be > 0"),
    ({"supervision.backoff_max_ms": 0}, "supervision.backoff_max_ms must be > 0"),
    ({"supervision.backoff_max_ms": 50}, "supervision.backoff_max_ms must be >= backoff_initial_ms"),
    ({"api.allowed_hosts": ["dev box"]}, 'api.allowed_hosts entry "dev box" must be a host name or host:port'),
    ({"api.allowed_origins": ["https://dash.test/path"]},
     'api.allowed_origins entry "https://dash.test/path" must be an origin such as https://host:port'),
    ({"api.idempotency_ttl_hours": 0}, "api.idempotency_ttl_hours must be > 0"),
    ({"agent_profiles": []}, "agent_profiles must contain at least one entry"),
    ({"agent_profiles": [shell_profile(" ")]}, "agent_profiles[0].name cannot be empty"),
    ({"agent_profiles": [shell_profile("default-shell"), shell_profile("default-shell")]},
     'duplicate agent profile "default-shell"'),
    ({"agent_profiles": [{"name": "default-shell", "runner": "codex", "base_prompt": " "}]},
     'agent profile "default-shell" requires non-empty base_prompt for codex runner'),
    ({"agent_profiles": [{"name": "default-shell", "runner": "shell"}]},
     'agent profile "default-shell" requires runner_options.command for shell runner'),
    ({"agent_profiles": [{"name": "default-shell", "runner": "command",
                          "runner_options": {"command": []}}]},
     'agent profile "default-shell" requires runner_options.command for command runner'),
    ({"agent_profiles": [{"name": "default-shell", "runner": "docker"}]},
     'agent profile "default-shell" has unsupported runner "docker"'),
    ({"agent_profiles": [shell_profile("default-shell", skills=["docmgr", " "])]},
     'agent profile "default-shell" has empty skill name'),
    ({"agents": []}, "agents must contain at least one entry"),
    ({"agents": [{"name": "", "profile": "default-shell"}]}, "agents[0].name cannot be empty"),
    ({"agents": [{"name": "a", "profile": "default-shell"}, {"name": "a", "profile": "default-shell"}]},
     'duplicate agent "a"'),
    ({"agents": [{"name": "agent", "profile": "ghost"}]},
     'agent "agent" references unknown profile "ghost"'),
]


@pytest.mark.parametrize(("changes", "message"), CASES, ids=[m for _, m in CASES])
def test_validation_message(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    data = mutated(changes)
    with pytest.raises(PolicyError) as err:
        validate_policy(unvalidated(data))
    assert str(err.value) == message
    # load_policy reports the very same message for the same content on disk.
    path = write_json(tmp_path / "p.json", data)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(err.value) == message
    assert err.value.path == path


def _overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return any(x == y or x.startswith(y + ".") or y.startswith(x + ".") for x in a for y in b)


def test_first_failure_wins_for_every_pair() -> None:
    """Any two independent broken fields: the one listed first in the spec is reported."""
    checked = 0
    for (first, expected), (later, _) in itertools.combinations(CASES, 2):
        if _overlaps(first, later):
            continue
        with pytest.raises(PolicyError) as err:
            validate_policy(unvalidated(mutated({**later, **first})))
        assert str(err.value) == expected, (first, later)
        checked += 1
    assert checked > 900


def test_everything_broken_reports_version_first() -> None:
    changes: dict[str, Any] = {}
    for mutation, _ in reversed(CASES):
        if not _overlaps(mutation, changes):
            changes.update(mutation)
    with pytest.raises(PolicyError, match="^version must be positive$"):
        validate_policy(unvalidated(mutated(changes)))


def test_redis_url_may_be_empty_with_embedded_always() -> None:
    validate_policy(unvalidated(mutated({"forum.redis.url": "", "forum.redis.embedded": "always"})))
    with pytest.raises(PolicyError, match="^forum.redis.url cannot be empty$"):
        validate_policy(unvalidated(mutated({"forum.redis.url": "", "forum.redis.embedded": "never"})))


def test_url_error_precedes_bad_embedded_mode() -> None:
    with pytest.raises(PolicyError, match="^forum.redis.url cannot be empty$"):
        validate_policy(unvalidated(mutated({"forum.redis.url": "", "forum.redis.embedded": "x"})))


@pytest.mark.parametrize(
    "profile",
    [
        {"name": "cli", "runner": "command", "runner_options": {"command": "claude -p {prompt}"}},
        {"name": "cli", "runner": "command", "runner_options": {"command": ["agent", "{prompt_file}"]}},
        {"name": "cli", "runner": "codex", "base_prompt": "Do the ticket.", "skills": ["git"]},
    ],
)
def test_other_runners_are_accepted(profile: dict[str, Any]) -> None:
    policy = policy_from_mapping({"agent_profiles": [profile], "agents": [{"name": "a", "profile": "cli"}]})
    assert policy.agent_profiles[0].runner == profile["runner"]


def test_policy_error_is_one_line() -> None:
    assert str(PolicyError("first\nsecond")) == "first second"


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:p%40ss@host/2", "rediss://user:***@host/2"),
        ("redis://user@host", "redis://user@host"),
        ("unix:///tmp/redis.sock?db=0&password=s3cret", "unix:///tmp/redis.sock?db=0&password=***"),
        ("redis://:pw@[::1", "redis://***"),
    ],
)
def test_redacted_redis_url(url: str, shown: str) -> None:
    assert redacted_redis_url(url) == shown


# --------------------------------------------------------------------------- policy-init


def test_policy_init_cli(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "policy.json"
    runner = CliRunner()

    first = runner.invoke(cli, ["policy-init", "--policy", str(path)])
    assert first.exit_code == 0, first.output
    assert first.stdout == f"wrote default policy to {path}\n"
    assert load_policy(path) == default_policy()

    path.write_text('{"version": 3}\n')
    second = runner.invoke(cli, ["policy-init", "--policy", str(path)])
    assert second.exit_code == 2
    assert second.stdout == ""
    assert second.stderr == f"error: policy file {path} already exists; use --force to overwrite\n"
    assert path.read_text() == '{"version": 3}\n'

    forced = runner.invoke(cli, ["policy-init", "--policy", str(path), "--force"])
    assert forced.exit_code == 0
    assert path.read_bytes() == policy_file_bytes(default_policy())


def test_policy_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["policy-init"])
    assert result.exit_code == 0
    assert result.stdout == "wrote default policy to .metawsm/policy.json\n"
    assert (tmp_path / ".metawsm" / "policy.json").is_file()


def test_policy_init_as_real_process(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "metawsm", "policy-init", "--policy", str(path)]

    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote default policy to {path}\n"
    assert load_policy(path) == default_policy()

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr == f"error: policy file {path} already exists; use --force to overwrite\n"
    assert "Traceback" not in again.stderr


# --------------------------------------------------------------------------- operator fields


def test_operator_notifications_and_llm_command_forms_are_accepted() -> None:
    policy = policy_from_mapping({"operator": {
        "notify_command": ["notify-send", "metawsm"], "notify_timeout_seconds": 0.5,
        "webhook_url": "http://127.0.0.1:9/hook", "webhook_attempts": 1, "webhook_timeout_seconds": 0.2,
        "llm": {"mode": " AUTO ", "command": ["python3", "adviser.py"]}}})
    assert policy.operator.notify_command == ["notify-send", "metawsm"]
    assert policy.operator.webhook_url == "http://127.0.0.1:9/hook"
    assert policy.operator.llm.command == ["python3", "adviser.py"]
    assert policy_from_mapping({"operator": {"llm": {"command": "codex --profile ops"}}}).operator.llm.command \
        == "codex --profile ops"
    assert policy_from_mapping({"operator": {"webhook_url": "https://hooks.test/x"}}).operator.webhook_url


def test_operator_llm_is_off_unless_asked_for() -> None:
    assert default_policy().operator.llm.mode == "off"
    assert policy_from_mapping({"operator": {"llm": {"mode": "assist"}}}).operator.llm.mode == "assist"
