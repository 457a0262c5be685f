"""The policy file and a real daemon: a Go policy starts `metawsm serve`, an edit applies to the next
run (a run keeps the policy it was planned with), an invalid edit refuses runs, and
`metawsm policy check` says what an edit would change (real Redis, tmux, git and SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from metawsm.policy_compat import INERT_FIELDS, inert_warning
from metawsm.transport.redis_process import free_tcp_port
from support.agents import BRIEF_FLAGS, LONG_AGENT, PYTHON, RunsEnv, hermetic_git, make_repo
from support.daemon import ServeProcess
from support.http import auth_headers

FIXTURE = Path(__file__).parent / "fixtures" / "go-policy.json"
SECRET_URL = "redis://:s3cret@127.0.0.1:1/0"  # in the file only; the daemon uses METAWSM_REDIS_URL


def metawsm(*args: str, cwd: Path, server: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, METAWSM_SERVER=server, NO_COLOR="1", COLUMNS="200")
    return subprocess.run([PYTHON, "-m", "metawsm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


def get_json(url: str) -> tuple[bytes, dict[str, Any]]:
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth_headers(url)), timeout=10) as response:
        raw = response.read()
    return raw, json.loads(raw)


def write_policy(env: RunsEnv, changes: dict[str, dict[str, Any]]) -> None:
    """The test policy with some sections' fields replaced, written where the daemon reads it."""
    data = json.loads(json.dumps(env.policy))
    for section, fields in changes.items():
        data.setdefault(section, {}).update(fields)
    env.serve.policy_path.write_text(json.dumps(data))


@contextmanager
def runs_env_with_secret_url(tmp_path: Path, redis_url: str, namespace: str,
                             monkeypatch: pytest.MonkeyPatch) -> Iterator[RunsEnv]:
    """A RunsEnv whose policy names a Redis URL with a password; the daemon is pointed at the test
    Redis by METAWSM_REDIS_URL, so the password is in the file but never needed."""
    hermetic_git(tmp_path, monkeypatch)
    env = RunsEnv(tmp_path, redis_url, namespace, agent=LONG_AGENT,
                  policy={"forum": {"redis": {"url": SECRET_URL}}, "operator": {"restart_budget": 3}})
    env.serve.env = {"METAWSM_REDIS_URL": redis_url}
    try:
        yield env.start()
    finally:
        env.close()


def test_the_go_example_policy_starts_serve_and_bootstrap_dry_run_works_under_it(
        tmp_path: Path, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hermetic_git(tmp_path, monkeypatch)
    repo = make_repo(tmp_path / "code" / "app")
    policy = json.loads(FIXTURE.read_text())
    policy["forum"]["redis"].update(url=redis_url, stream=redis_namespace, group=redis_namespace)
    serve = ServeProcess(repo, policy, debug=False)  # started inside the checkout, as a Go user would
    serve.start()
    try:
        log = serve.log()
        for field in INERT_FIELDS:
            assert log.count(inert_warning(field)) == 1, (field, log)

        plan = metawsm("bootstrap", "--ticket", "GO-1", "--repos", "app", *BRIEF_FLAGS, "--dry-run",
                       cwd=repo, server=serve.url)
        assert plan.returncode == 0, plan.stderr
        lines = plan.stdout.splitlines()
        assert lines[0].startswith("run_") and "bootstrap" in lines[0], plan.stdout
        for step in ("verify_ticket", "provision_workspace", "seed_docs", "write_run_file", "start_agent:agent"):
            assert step in plan.stdout, plan.stdout
        assert "agent-go-1-" in plan.stdout  # the Go policy's session pattern

        checked = metawsm("policy", "check", "--policy", str(serve.policy_path), cwd=repo, server=serve.url)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.splitlines()[0] == f"{serve.policy_path}: valid"
        assert checked.stdout.splitlines()[1:] == [*map(inert_warning, INERT_FIELDS), "no changes"]
        # Planning re-read the file; what serve warned about at start-up is not warned again.
        log = serve.log()
        for field in INERT_FIELDS:
            assert log.count(inert_warning(field)) == 1, (field, log)
    finally:
        serve.stop()


def test_an_edit_of_the_policy_applies_to_the_next_run_and_a_run_keeps_the_policy_it_was_planned_with(
        tmp_path: Path, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with runs_env_with_secret_url(tmp_path, redis_url, redis_namespace, monkeypatch) as env:
        first = env.start_run(ticket="T-1")["run_id"]
        env.wait_agent(first, lambda a: a["status"] == "running", "running")
        assert env.agent(first)["restarts_left"] == 3

        write_policy(env, {"operator": {"restart_budget": 5},
                           "tmux": {"session_pattern": "next-{agent}-{workspace}"},
                           "forum": {"max_attempts": 9}})
        second = env.start_run(ticket="T-2")["run_id"]
        agent = env.wait_agent(second, lambda a: a["status"] == "running", "running")
        assert agent["session"].startswith("next-agent-t-2-"), agent
        assert agent["restarts_left"] == 5
        old = env.agent(first)
        assert old["restarts_left"] == 3 and old["session"].startswith("agent-t-1-"), old
        assert sorted(env.sessions()) == sorted([old["session"], agent["session"]])

        _, shown = get_json(env.url + "/api/v1/policy")
        assert shown["path"] == str(env.serve.policy_path)
        assert shown["policy"]["operator"]["restart_budget"] == 5
        assert shown["policy"]["forum"]["max_attempts"] == 5  # needs a restart of serve
        notice = f"policy: forum.max_attempts changed in {env.serve.policy_path}; restart metawsm serve to apply it"
        assert env.serve.log().count(notice) == 1

        dry = env.api("POST", "/api/v1/runs", {"tickets": ["T-3"], "repos": [env.repo_name], "cwd": str(env.repo),
                                               "dry_run": True})
        assert dry.status == 200, dry
        assert env.serve.log().count(notice) == 1  # said once, not at every run


def test_an_invalid_policy_edit_refuses_runs_and_policy_check_says_what_an_edit_would_change(
        tmp_path: Path, redis_url: str, redis_namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with runs_env_with_secret_url(tmp_path, redis_url, redis_namespace, monkeypatch) as env:
        path = env.serve.policy_path
        raw, shown = get_json(env.url + "/api/v1/policy")
        assert shown["policy"]["forum"]["redis"]["url"] == "redis://:***@127.0.0.1:1/0"
        assert b"s3cret" not in raw

        def check(*extra: str) -> subprocess.CompletedProcess[str]:
            return metawsm("policy", "check", "--policy", str(path), *extra, cwd=env.repo, server=env.url)

        assert check().stdout == f"{path}: valid\nno changes\n"

        write_policy(env, {"workspace": {"base_branch": "develop"}, "forum": {"redis": {
            **env.policy["forum"]["redis"], "url": "redis://:other@127.0.0.1:2/0"}}})
        result = check()
        assert result.returncode == 0, result.stderr
        assert result.stdout == (
            f"{path}: valid\n"
            "workspace.base_branch: main -> develop (next run)\n"
            "forum.redis.url: redis://:***@127.0.0.1:1/0 -> redis://:***@127.0.0.1:2/0 (restart serve)\n")
        assert "s3cret" not in result.stdout and "other" not in result.stdout
        report = json.loads(check("--json").stdout)
        assert report["valid"] is True and report["daemon"] == {
            "server": env.url, "reachable": True, "path": str(path), "error": ""}
        assert report["changes"][0] == {"field": "workspace.base_branch", "from": "main", "to": "develop",
                                        "applies": "next_run"}

        write_policy(env, {"execution": {"step_retries": -1}})
        refused = env.api("POST", "/api/v1/runs", {"tickets": ["T-1"], "repos": [env.repo_name],
                                                   "cwd": str(env.repo), "dry_run": True})
        assert refused.status == 400
        assert refused.data == {"error": {"code": "invalid_policy", "message": "execution.step_retries must be >= 0"}}
        invalid = check()
        assert (invalid.returncode, invalid.stdout) == (2, "")
        assert invalid.stderr == "error: execution.step_retries must be >= 0\n"
        _, kept = get_json(env.url + "/api/v1/policy")
        assert kept == shown  # the daemon kept the policy it had

        write_policy(env, {"workspace": {"base_branch": "main"}})
        planned = env.api("POST", "/api/v1/runs", {"tickets": ["T-1"], "repos": [env.repo_name],
                                                   "cwd": str(env.repo), "dry_run": True})
        assert planned.status == 200, planned

        nobody = f"http://127.0.0.1:{free_tcp_port()}"
        alone = check("--server", nobody)
        assert alone.returncode == 0, alone.stderr
        assert alone.stdout == f"{path}: valid\ndaemon not reachable at {nobody}: showing the file only\n"
