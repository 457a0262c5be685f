"""Policies of the Go version: they load, their inert fields are named once, their new fields are
typed and validated; what an edit changes and when it applies; the codex runner's full_auto."""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metawsm.policy import (
    DocsEndpoint,
    Policy,
    PolicyError,
    change_applies,
    default_policy,
    encode_policy,
    policy_changes,
    policy_from_mapping,
    read_policy_file,
    redacted_policy,
    with_sections_of,
    write_default_policy,
)
from metawsm.policy_compat import INERT_FIELDS, inert_fields_in, inert_warning
from metawsm.runs.model import RunRequest, RunSpec
from metawsm.runs.planner import plan_run, resolve_command
from metawsm.services import PolicyWatch

FIXTURE = Path(__file__).parent / "fixtures" / "go-policy.json"

# The Go version's default policy, as its policy-init wrote it (null where it wrote null).
GO_DEFAULTS: dict[str, Any] = {
    "version": 2,
    "workspace": {"default_strategy": "create", "branch_prefix": "task", "base_branch": "main"},
    "docs": {"authority_mode": "workspace_active", "seed_mode": "copy_from_repo_on_start",
             "stale_warning_seconds": 900,
             "api": {"workspace_endpoints": None, "repo_endpoints": None, "request_timeout_seconds": 3}},
    "tmux": {"session_pattern": "{agent}-{workspace}"},
    "execution": {"step_retries": 1},
    "health": {"idle_seconds": 300, "activity_stalled_seconds": 900, "progress_stalled_seconds": 1200},
    "close": {"require_clean_git": True},
    "operator": {"unhealthy_confirmations": 2, "restart_budget": 3, "restart_cooldown_seconds": 60,
                 "stale_run_age_seconds": 3600,
                 "llm": {"mode": "assist", "command": "codex", "model": "", "timeout_seconds": 30,
                         "max_tokens": 400}},
    "forum": {"enabled": True,
              "topics": {"command_prefix": "forum.commands", "event_prefix": "forum.events",
                         "integration_prefix": "forum.integration"},
              "redis": {"url": "redis://127.0.0.1:6379/0", "stream": "metawsm-forum", "group": "metawsm-forum",
                        "consumer": "operator"},
              "sla": {"escalation_minutes": 30}, "docs_sync": {"enabled": True}},
    "git_pr": {"mode": "assist", "credential_mode": "local_user_auth", "branch_template": "{ticket}/{repo}/{run}",
               "require_all": True, "required_checks": ["tests", "forbidden_files", "ticket_workflow", "clean_tree"],
               "test_commands": [],
               "forbidden_file_patterns": [".env", ".env.*", "*.pem", "*.key", "*.p12", "*.pfx", "id_rsa",
                                           "id_ed25519"],
               "allowed_repos": [], "default_labels": [], "default_reviewers": [],
               "review_feedback": {"enabled": False, "mode": "assist", "include_review_comments": True,
                                   "ignore_authors": [], "max_items_per_sync": 50,
                                   "auto_dispatch_cap_per_interval": 1}},
    "agent_profiles": [{"name": "default-shell", "runner": "shell", "base_prompt": "", "skills": None,
                        "runner_options": {"full_auto": False, "command": "bash"}}],
    "agents": [{"name": "agent", "profile": "default-shell"}],
}
ENDPOINT_FIELDS = {"name", "base_url", "web_url", "repo", "workspace"}


def leaf_paths(node: Any, path: str = "") -> set[str]:
    """Dotted paths of the values in plain JSON; ``name[]`` for the entries of a list of objects."""
    if isinstance(node, dict):
        return set().union(*(leaf_paths(v, f"{path}.{k}" if path else k) for k, v in node.items())) or {path}
    if isinstance(node, list) and node and all(isinstance(item, dict) for item in node):
        return set().union(*(leaf_paths(item, f"{path}[]") for item in node))
    return {path}


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading a Go policy


def test_the_go_versions_default_policy_is_our_default_policy() -> None:
    # One default differs on purpose: the LLM assistant is off unless asked for (docs/operator.md).
    ours = copy.deepcopy(GO_DEFAULTS)
    ours["operator"]["llm"]["mode"] = "off"
    assert policy_from_mapping(ours) == default_policy()


def test_the_fixture_sets_every_field_of_the_go_schema() -> None:
    fixture = json.loads(FIXTURE.read_text())
    present = leaf_paths(fixture)
    for path in leaf_paths(GO_DEFAULTS):
        assert path in present or any(p.startswith(path + "[]") for p in present), path
    api = fixture["docs"]["api"]
    assert set(api["workspace_endpoints"][0]) == ENDPOINT_FIELDS
    assert api["repo_endpoints"]
    codex = next(p for p in fixture["agent_profiles"] if p["runner"] == "codex")
    assert codex["runner_options"]["full_auto"] is True and codex["skills"] and codex["base_prompt"]


def test_the_go_fixture_loads_and_names_every_inert_field_exactly_once() -> None:
    loaded = read_policy_file(FIXTURE)
    assert loaded.exists
    assert list(loaded.inert_fields) == list(INERT_FIELDS)
    assert loaded.warnings == [f"policy: {field} is accepted for compatibility and has no effect here"
                               for field in INERT_FIELDS]
    assert len(set(loaded.warnings)) == len(loaded.warnings)


def test_the_go_fixtures_fields_are_typed() -> None:
    policy = read_policy_file(FIXTURE).policy
    assert policy.docs.api.workspace_endpoints == [DocsEndpoint(
        name="team-notes", base_url="http://127.0.0.1:8710", web_url="http://127.0.0.1:8711/notes", repo="app",
        workspace="shared-notes")]
    assert policy.docs.api.repo_endpoints[0].web_url == ""
    assert policy.operator.stale_run_age_seconds == 7200
    assert policy.operator.llm.mode == " Assist "  # kept as written; validated trimmed and lower-cased
    assert policy.operator.llm.max_tokens == 300
    assert policy.git_pr.required_checks == ["tests", "forbidden_files", "clean_tree"]
    assert policy.git_pr.review_feedback.ignore_authors == ["ci-bot"]
    assert policy.forum.docs_sync.enabled is False
    shell, codex = policy.agent_profiles
    assert shell.skills == []  # null in the file
    assert codex.skills == ["docmgr", "diary"] and codex.runner_options.full_auto is True
    assert policy.tmux.socket == "auto"  # the Go version had no socket: one of this daemon's own


def test_a_policy_of_this_version_that_sets_no_go_field_warns_about_nothing(tmp_path: Path) -> None:
    path = write_default_policy(tmp_path / "policy.json")
    assert read_policy_file(path).inert_fields == ()
    written = json.loads(path.read_text())
    assert "close" not in written
    # Only the git_pr fields commit and pr honour are written (docs/policy.md).
    assert set(written["git_pr"]) == {"mode", "provider", "require_all", "required_checks", "test_commands",
                                      "forbidden_file_patterns", "default_labels", "default_reviewers",
                                      "review_feedback"}
    assert written["git_pr"]["review_feedback"] == {"ignore_authors": []}


def test_a_file_with_every_field_written_out_names_every_inert_field(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(encode_policy(default_policy()))
    assert read_policy_file(path).inert_fields == INERT_FIELDS


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ({}, []),
        ({"git_pr": {}}, []),
        ({"git_pr": {"mode": "off", "default_labels": ["x"], "branch_template": "t/{ticket}"}},
         ["git_pr.branch_template"]),
        ({"operator": {"restart_budget": 2, "llm": {"model": "m", "max_tokens": 9}}}, ["operator.llm.max_tokens"]),
        ({"docs": {"api": {"workspace_endpoints": None}}}, ["docs.api.workspace_endpoints"]),
        # Two profiles with skills: the field is named once.
        ({"agent_profiles": [{"name": "a", "skills": []}, {"name": "b", "skills": ["x"]}]},
         ["agent_profiles[].skills"]),
        ({"forum": {"sla": {"escalation_minutes": 30}, "enabled": False}},
         ["forum.enabled"]),
    ],
)
def test_inert_fields_are_named_only_when_the_file_sets_them(data: dict[str, Any], named: list[str]) -> None:
    assert inert_fields_in(data) == named


@pytest.mark.parametrize("mode", ["off", "assist", "auto", " AUTO ", "Off"])
def test_operator_llm_mode_is_compared_trimmed_and_lower_cased(mode: str) -> None:
    assert policy_from_mapping({"operator": {"llm": {"mode": mode}}}).operator.llm.mode == mode


@pytest.mark.parametrize(("data", "message"), [
    ({"git_pr": {"mode": "Assist"}}, "git_pr.mode must be off|assist|auto"),
    ({"git_pr": {"review_feedback": {"mode": "AUTO"}}}, "git_pr.review_feedback.mode must be assist|auto"),
])
def test_other_choice_fields_match_exactly(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy_from_mapping(data)
    assert str(err.value) == message


def test_a_go_field_with_a_bad_value_stops_serve_like_any_other(tmp_path: Path) -> None:
    data = json.loads(FIXTURE.read_text())
    data["git_pr"]["required_checks"] = ["tests", "lint"]
    with pytest.raises(PolicyError) as err:
        read_policy_file(write_json(tmp_path / "p.json", data))
    assert str(err.value) == 'git_pr.required_checks contains unsupported check "lint"'


# --------------------------------------------------------------------------- changes and when they apply


@pytest.mark.parametrize(("field", "applies"), [
    ("workspace.base_branch", "next_run"),
    ("operator.restart_budget", "next_run"),
    ("agent_profiles[1].runner", "next_run"),
    ("agents", "next_run"),
    ("tmux.socket", "next_run"),
    ("forum.redis.url", "restart"),
    ("forum.max_attempts", "restart"),
    ("forum.sla.escalation_minutes", "restart"),
    ("supervision.max_restarts", "restart"),
    ("debug.fault_injection", "restart"),
    ("forum.enabled", "no_effect"),
    ("forum.docs_sync.enabled", "no_effect"),
    ("git_pr.review_feedback.mode", "no_effect"),
    ("docs.api.workspace_endpoints[0].name", "no_effect"),
    ("agent_profiles[1].skills", "no_effect"),
    ("operator.llm.model", "next_run"),
    ("operator.llm.max_tokens", "no_effect"),
])
def test_a_change_applies_to_the_next_run_after_a_restart_or_never(field: str, applies: str) -> None:
    assert change_applies(field) == applies


def test_policy_changes_lists_each_changed_field_in_schema_order() -> None:
    before = default_policy()
    after = policy_from_mapping({
        "workspace": {"base_branch": "develop", "repo_sources": {"app": "/src/app"}},
        "forum": {"max_attempts": 9},
        "agent_profiles": [{"name": "default-shell", "runner": "shell", "runner_options": {"command": "zsh"}}],
        "agents": [{"name": "agent", "profile": "default-shell"}, {"name": "second", "profile": "default-shell"}],
    })
    changes = [(c.field, c.before, c.after, c.applies) for c in policy_changes(before, after)]
    assert changes == [
        ("workspace.base_branch", "main", "develop", "next_run"),
        ("workspace.repo_sources.app", None, "/src/app", "next_run"),
        ("forum.max_attempts", 5, 9, "restart"),
        ("agent_profiles[0].runner_options.command", "bash", "zsh", "next_run"),
        ("agents", [{"name": "agent", "profile": "default-shell"}],
         [{"name": "agent", "profile": "default-shell"}, {"name": "second", "profile": "default-shell"}],
         "next_run"),
    ]
    assert policy_changes(before, msgspec.to_builtins(before)) == []
    assert json.loads(msgspec.json.encode(policy_changes(before, after)[0])) == {
        "field": "workspace.base_branch", "from": "main", "to": "develop", "applies": "next_run"}


def test_the_restart_sections_of_a_reloaded_policy_stay_those_of_the_start() -> None:
    running = policy_from_mapping({"forum": {"max_attempts": 2}, "debug": {"fault_injection": True}})
    edited = policy_from_mapping({"forum": {"max_attempts": 9}, "workspace": {"base_branch": "develop"}})
    applied = with_sections_of(edited, running)
    assert applied.forum.max_attempts == 2 and applied.debug.fault_injection is True
    assert applied.workspace.base_branch == "develop"


def test_the_redis_password_is_masked_in_a_redacted_policy() -> None:
    policy = policy_from_mapping({"forum": {"redis": {"url": "redis://:s3cret@redis.test:6379/0"}}})
    shown = redacted_policy(policy)
    assert shown.forum.redis.url == "redis://:***@redis.test:6379/0"
    assert "s3cret" not in encode_policy(shown).decode()
    assert shown.workspace == policy.workspace


# --------------------------------------------------------------------------- the daemon's watch on its file


def test_the_watch_rereads_the_file_only_when_it_changed(tmp_path: Path) -> None:
    path = write_json(tmp_path / "policy.json", {"workspace": {"base_branch": "main"}})
    startup = read_policy_file(path).policy
    watch = PolicyWatch(str(path), startup)
    first = watch.refresh(startup)
    assert first == startup
    assert watch.refresh(first) is first  # unchanged file: not read again
    write_json(path, {"workspace": {"base_branch": "develop"}})
    assert watch.refresh(first).workspace.base_branch == "develop"
    path.unlink()
    assert watch.refresh(first) == default_policy()  # no file: the built-in defaults, as at start-up


def test_an_invalid_file_is_refused_each_time_until_it_is_fixed(tmp_path: Path) -> None:
    path = write_json(tmp_path / "policy.json", {})
    startup = read_policy_file(path).policy
    watch = PolicyWatch(str(path), startup)
    write_json(path, {"execution": {"step_retries": -1}})
    for _ in range(2):
        with pytest.raises(PolicyError, match=r"^execution.step_retries must be >= 0$"):
            watch.refresh(startup)
    write_json(path, {"execution": {"step_retries": 4}})
    assert watch.refresh(startup).execution.step_retries == 4


def test_a_change_that_needs_a_restart_is_logged_once_and_not_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="metawsm.policy")
    path = write_json(tmp_path / "policy.json", {"git_pr": {"mode": "off"}})
    loaded = read_policy_file(path)
    watch = PolicyWatch(str(path), loaded.policy)
    watch.note_startup(loaded)  # serve warned about git_pr.mode already
    restart = f"policy: forum.max_attempts changed in {path}; restart metawsm serve to apply it"

    write_json(path, {"git_pr": {"mode": "off"}, "forum": {"max_attempts": 9}, "close": {"require_clean_git": False}})
    policy = watch.refresh(loaded.policy)
    assert policy.forum.max_attempts == 5 and policy.close.require_clean_git is False
    write_json(path, {"git_pr": {"mode": "off"}, "forum": {"max_attempts": 9}, "close": {}, "health": {}})
    watch.refresh(policy)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [inert_warning("close.require_clean_git"), restart]

    write_json(path, {"forum": {"max_attempts": 5}})  # back to the start-up value: nothing to restart for
    watch.refresh(policy)
    write_json(path, {"forum": {"max_attempts": 9}})  # changed again: said again
    watch.refresh(policy)
    assert [record.getMessage() for record in caplog.records].count(restart) == 2


def test_a_watch_without_a_file_keeps_the_policy_it_was_given() -> None:
    policy = policy_from_mapping({"execution": {"step_retries": 3}})
    assert PolicyWatch("", default_policy()).refresh(policy) is policy


# --------------------------------------------------------------------------- runs keep their policy


def test_a_planned_run_keeps_its_policy_without_the_redis_password(tmp_path: Path) -> None:
    policy = policy_from_mapping({"operator": {"restart_budget": 7},
                                  "forum": {"redis": {"url": "redis://:s3cret@127.0.0.1:6379/0"}}})
    request = RunRequest(tickets=["T-1"], repos=["app"], dry_run=True)
    spec = plan_run(request, policy, policy_path="", server_url="http://127.0.0.1:1", base_dir=tmp_path).spec
    stored = msgspec.json.decode(msgspec.json.encode(spec), type=RunSpec)
    assert stored.policy == redacted_policy(policy)
    assert stored.policy_or(default_policy()).operator.restart_budget == 7
    assert b"s3cret" not in msgspec.json.encode(spec)


def test_a_run_stored_before_runs_kept_their_policy_uses_the_daemons(tmp_path: Path) -> None:
    request = RunRequest(tickets=["T-1"], repos=["app"], dry_run=True)
    spec = plan_run(request, default_policy(), policy_path="", server_url="http://127.0.0.1:1", base_dir=tmp_path).spec
    old_row = msgspec.to_builtins(spec)
    del old_row["policy"]
    old = msgspec.json.decode(msgspec.json.encode(old_row), type=RunSpec)
    daemon = policy_from_mapping({"operator": {"restart_budget": 9}})
    assert old.policy is None and old.policy_or(daemon) is daemon


# --------------------------------------------------------------------------- the codex runner


@pytest.fixture
def codex_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real ``codex`` executable first on PATH (it is never started: planning only resolves it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "codex"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return program


def codex_profile(**options: Any) -> Any:
    return policy_from_mapping({
        "agent_profiles": [{"name": "coder", "runner": "codex", "base_prompt": "Do the ticket.",
                            "runner_options": options}],
        "agents": [{"name": "agent", "profile": "coder"}],
    }).agent_profiles[0]


@pytest.mark.parametrize(("options", "argv"), [
    ({}, ["codex", "the prompt"]),
    ({"full_auto": True}, ["codex", "--full-auto", "the prompt"]),
    ({"full_auto": True, "command": "codex exec --model m"}, ["codex", "--full-auto", "exec", "--model", "m"]),
    ({"full_auto": True, "command": ["codex", "--full-auto", "exec"]}, ["codex", "--full-auto", "exec"]),
    ({"full_auto": False, "command": "codex exec"}, ["codex", "exec"]),
])
def test_the_codex_runner_honours_full_auto(codex_on_path: Path, options: dict[str, Any], argv: list[str]) -> None:
    assert resolve_command(codex_profile(**options), "/tmp/prompt.md", "the prompt") == argv


def test_full_auto_is_ignored_by_the_other_runners() -> None:
    profile = policy_from_mapping({"agent_profiles": [
        {"name": "default-shell", "runner": "shell", "runner_options": {"full_auto": True, "command": "bash -l"}}],
    }).agent_profiles[0]
    assert resolve_command(profile, "/tmp/prompt.md", "p") == ["bash", "-l"]


def test_the_policy_type_accepts_every_go_section() -> None:
    assert {"close", "git_pr"} <= set(Policy.__struct_fields__)
