"""Script agents and a run harness for the runs tests (real tmux, real git, real `metawsm serve`).

A *script agent* is a bash script started by the daemon in a tmux session, exactly as a real
agent would be: it prints, commits in its workspace and posts control signals with the
documented in-session command, ``metawsm forum signal --run-id "$METAWSM_RUN_ID" ...``, using
the bare ``metawsm`` of its PATH and the ``METAWSM_*`` variables the daemon gives every agent.
The daemon runs with a PATH that has no ``metawsm`` (like one started by full path), so every
signal proves that the daemon's shim is on the agent's PATH.  Scripts may sleep (they are the
agents); the tests never do — they wait with :func:`metawsm.waiting.wait_until`.

:class:`RunsEnv` puts one source repository and one ``metawsm serve`` next to each other::

    <tmp>/code/<repo>      the user's checkout (``--repos <repo>`` resolves through
                           ``workspace.repo_sources``; the CLI is run from inside it)
    <tmp>/code/daemon      the daemon's cwd: .metawsm/{policy.json,metawsm.db,workspaces,logs}

Its tmux server is the policy's private socket ``mw-<namespace>`` (or, with ``tmux.socket``
``"auto"``, the name the daemon derives from its database); :meth:`RunsEnv.close` stops the
daemon and kills that server.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import shlex
import shutil
import sqlite3
import struct
import subprocess
import sys
import termios
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from metawsm.runs.sockets import tmux_socket_for
from metawsm.waiting import wait_until
from support.daemon import ServeProcess, policy_data
from support.http import auth_headers
from support.processes import kill_tmux_server, require_executable

PYTHON = sys.executable
DONE = "tests pass"
BRIEF_FLAGS = ["--goal", "Ship the feature", "--scope", "only this repo", "--done-criteria", DONE,
               "--constraints", "no new dependencies", "--merge-intent", "merge into main"]
BRIEF = {"goal": "Ship the feature", "scope": "only this repo", "done_criteria": DONE,
         "constraints": "no new dependencies", "merge_intent": "merge into main"}

# -- git -------------------------------------------------------------------------------------


def hermetic_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git (here, in the daemon and in its agents) sees only a test config, never the host's."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Test User\n\temail = test@example.com\n"
                      "[init]\n\tdefaultBranch = main\n[commit]\n\tgpgsign = false\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                "GIT_DIR", "GIT_WORK_TREE", "TMUX", "TMUX_PANE", "METAWSM_SERVER"):
        monkeypatch.delenv(var, raising=False)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    (path / "README.md").write_text(f"# {path.name}\n")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def worktree_paths(repo: Path) -> list[Path]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [Path(line.split(" ", 1)[1]).resolve() for line in out.splitlines() if line.startswith("worktree ")]


def branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads").splitlines()


# -- script agents ---------------------------------------------------------------------------

# Python the agents call for what bash cannot do well: wait for the answer to their question.
_HELPER = r'''
import json, os, sys, time, urllib.request

server, run_id, agent = os.environ["METAWSM_SERVER"], os.environ["METAWSM_RUN_ID"], os.environ["METAWSM_AGENT"]

def token():
    # The agent's own token when the daemon gives one, else the operator's file (as the CLI does).
    if os.environ.get("METAWSM_TOKEN"):
        return os.environ["METAWSM_TOKEN"]
    with urllib.request.urlopen(server + "/api/v1/auth", timeout=5) as response:
        info = json.load(response)
    if info.get("auth") == "off":
        return ""
    with open(info["token_file"], encoding="utf-8") as file:
        return file.read().strip()

TOKEN = token()

def get(path):
    headers = {"Authorization": f"Bearer {TOKEN}"} if TOKEN else {}
    with urllib.request.urlopen(urllib.request.Request(server + path, headers=headers), timeout=5) as response:
        return json.load(response)

if sys.argv[1] == "wait-answer":
    # The first guidance_answer signal for this agent in the run's forum event log.
    cursor, deadline = 0, time.time() + float(sys.argv[2] if len(sys.argv) > 2 else 120)
    while time.time() < deadline:
        page = get(f"/api/v1/forum/events?run_id={run_id}&cursor={cursor}&limit=500")
        for event in page["events"]:
            body = event.get("payload_json") or {}
            fields = body.get("payload") or {}
            if body.get("control_type") == "guidance_answer" and fields.get("agent_name") == agent:
                print(fields.get("answer", ""))
                sys.exit(0)
        cursor = page.get("next_cursor") or cursor
        time.sleep(0.1)
    sys.exit("no answer")
'''

_PREAMBLE = """#!/usr/bin/env bash
# metawsm test script agent: {title}
set -u
PY={python}
HELPER={helper}
say() {{ echo "[$METAWSM_AGENT] $*"; }}
signal() {{
  metawsm forum signal --run-id "$METAWSM_RUN_ID" --ticket "$METAWSM_TICKET" --agent-name "$METAWSM_AGENT" \\
    "$@" >/dev/null
}}
commit() {{  # commit FILE TEXT MESSAGE
  printf '%s\\n' "$2" > "$1"
  git add -- "$1" && git -c user.name=script-agent -c user.email=agent@example.com \\
    -c commit.gpgsign=false commit -q -m "$3" || true
}}
wait_answer() {{ "$PY" "$HELPER" wait-answer; }}
say "started in $PWD for run $METAWSM_RUN_ID ticket $METAWSM_TICKET workspace $METAWSM_WORKSPACE"
"""

# Bootstrap agent: works, asks, waits for the answer, finishes, validates, then stays up.
GUIDANCE_AGENT = """
commit notes.txt "first step" "agent: first step"
signal --type guidance_request --question "Which database should I use?" --context "postgres or sqlite"
say "asked for guidance"
answer=$(wait_answer)
say "got answer: $answer"
commit decision.txt "$answer" "agent: apply the decision"
signal --type completion --summary "Implemented with $answer"
signal --type validation --status passed --done-criteria "{done}"
say "completion and validation posted"
exec sleep 600
"""

# Finishes on its own: commits, signals completion and a passed validation, exits 0.
FINISH_AGENT = """
commit result.txt "done" "agent: the whole job"
signal --type completion --summary "all done"
signal --type validation --status passed --done-criteria "{done}"
say "finished"
exit 0
"""

# Works "forever": prints a tick twice a second (window activity) after one commit.
LONG_AGENT = """
commit work.txt "working" "agent: start work"
while true; do echo "tick $(date +%s.%N)"; sleep 0.5; done
"""

# Says one thing, then stays silent (and makes no progress) for a long time.
QUIET_AGENT = """
exec sleep 600
"""

# Exits at once with an error: every restart fails the same way.
CRASH_AGENT = """
say "crashing"
exit 3
"""

# Uses the bare `metawsm` of its PATH, as the docs tell a real agent to, then asks a question
# with the documented in-session command and stays up.
PATH_AGENT = """
say "metawsm is $(command -v metawsm || echo missing)"
say "version: $(metawsm --version 2>&1)"
metawsm forum signal --run-id "$METAWSM_RUN_ID" --ticket "$METAWSM_TICKET" --agent-name "$METAWSM_AGENT" \\
  --type guidance_request --question "{question}"
say "signal exit status $?"
exec sleep 600
"""


def write_agent(path: Path, body: str, title: str = "agent", **values: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    helper = path.parent / "agent_helper.py"
    helper.write_text(_HELPER)
    preamble = _PREAMBLE.format(title=title, python=shlex.quote(PYTHON), helper=shlex.quote(str(helper)))
    path.write_text(preamble + body.format(**values))
    path.chmod(0o755)
    return path


# -- the harness -----------------------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def fast_policy(**operator: Any) -> dict[str, Any]:
    """Health and restart knobs small enough for tests (merged over the test policy)."""
    return {
        "health": {"poll_seconds": 0.2, "idle_seconds": 30, "activity_stalled_seconds": 60,
                   "progress_stalled_seconds": 120},
        "operator": {"unhealthy_confirmations": 2, "restart_budget": 3, "restart_cooldown_seconds": 0.2,
                     "restart_budget_reset_seconds": 600, **operator},
        "execution": {"step_retries": 0},
    }


class ApiResult:
    def __init__(self, status: int, data: Any) -> None:
        self.status = status
        self.data = data

    def __repr__(self) -> str:
        return f"ApiResult({self.status}, {self.data!r})"


class RunsEnv:
    """One temp repo, one script agent and one real ``metawsm serve`` (see the module doc)."""

    def __init__(self, tmp_path: Path, redis_url: str, namespace: str, *, repo: str = "app",
                 agent: str = LONG_AGENT, policy: dict[str, Any] | None = None,
                 serve_env: dict[str, str] | None = None, **agent_values: str) -> None:
        require_executable("tmux")
        require_executable("git")
        self.tmp = tmp_path
        self.repo = make_repo(tmp_path / "code" / repo)
        self.repo_name = repo
        self.script = write_agent(tmp_path / "agents" / "agent.sh", agent, **agent_values)
        data = _merge(policy_data(redis_url, namespace), fast_policy())
        data["agent_profiles"] = [{"name": "script", "runner": "shell",
                                   "runner_options": {"command": ["bash", str(self.script)]}}]
        data["agents"] = [{"name": "agent", "profile": "script"}]
        # The checkout is a sibling of the daemon's directory: the operator names it as a source,
        # or the daemon refuses to touch it (runs stay inside the daemon's directories).
        data = _merge(data, {"workspace": {"repo_sources": {repo: str(self.repo)}}})
        data = _merge(data, policy or {})
        self.policy = data
        # The daemon's PATH has no metawsm, as when it is started by full path; serve_env is laid
        # over the test's environment for the daemon.
        self.serve = ServeProcess(tmp_path / "code" / "daemon", data,
                                  env={"PATH": path_without_metawsm(), **(serve_env or {})})
        self.socket = tmux_socket_for(data["tmux"]["socket"], self.serve.db_path)
        self.daemon_dir = self.serve.workdir
        self.workspace_root = self.daemon_dir / ".metawsm" / "workspaces"
        self.bin_dir = self.serve.db_path.parent / "bin"  # where the daemon keeps its metawsm shim

    def start(self) -> RunsEnv:
        self.serve.start()
        return self

    def close(self) -> None:
        try:
            self.serve.stop()
        finally:
            for socket in {self.socket, *self._run_sockets()}:
                kill_tmux_server(socket)

    def _run_sockets(self) -> set[str]:
        """The tmux servers the daemon's runs were planned on (whatever the test expected)."""
        if not self.serve.db_path.exists():
            return set()
        with closing(sqlite3.connect(self.serve.db_path)) as conn:
            try:
                return {row[0] for row in conn.execute("SELECT DISTINCT tmux_socket FROM run_agents") if row[0]}
            except sqlite3.Error:  # no runs table yet
                return set()

    @property
    def url(self) -> str:
        return self.serve.url

    # -- HTTP ------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> ApiResult:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **auth_headers(self.url)})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return ApiResult(response.status, json.load(response))
        except urllib.error.HTTPError as error:
            raw = error.read()
            return ApiResult(error.code, json.loads(raw) if raw else None)

    def start_run(self, mode: str = "run", ticket: str = "T-1", **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": mode, "tickets": [ticket], "repos": [self.repo_name], "cwd": str(self.repo)}
        if mode == "bootstrap":
            body["brief"] = dict(BRIEF)
        body.update(extra)
        result = self.api("POST", "/api/v1/runs", body)
        assert result.status == 200, result
        return result.data["run"]

    def snapshot(self, run_id: str) -> dict[str, Any]:
        result = self.api("GET", f"/api/v1/runs/{run_id}")
        assert result.status == 200, result
        return result.data["run"]

    def agent(self, run_id: str, name: str = "agent") -> dict[str, Any]:
        return next(a for a in self.snapshot(run_id)["agents"] if a["name"] == name)

    def act(self, run_id: str, action: str, **options: Any) -> ApiResult:
        return self.api("POST", f"/api/v1/runs/{run_id}/{action}", options)

    def wait_status(self, run_id: str, status: str, timeout: float = 20.0) -> dict[str, Any]:
        return wait_until(lambda: (s := self.snapshot(run_id))["status"] == status and s, timeout=timeout,
                          interval=0.02, message=f"run {run_id} to become {status}; log:\n{self.serve.log()[-3000:]}")

    def wait_agent(self, run_id: str, predicate: Callable[[dict[str, Any]], bool], what: str,
                   timeout: float = 20.0, name: str = "agent") -> dict[str, Any]:
        last: list[dict[str, Any]] = []

        def check() -> dict[str, Any] | None:
            agent = self.agent(run_id, name)
            last[:] = [agent]
            return agent if predicate(agent) else None

        try:
            return wait_until(check, timeout=timeout, interval=0.02, message=f"agent {name} of {run_id}: {what}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; agent: {last}; log:\n{self.serve.log()[-3000:]}") from None

    def actors(self, run_id: str | None = None) -> dict[str, Any]:
        path = f"/api/v1/runs/{run_id}/actors" if run_id else "/api/v1/debug/actors"
        result = self.api("GET", path)
        assert result.status == 200, result
        return result.data["actors"]

    # -- CLI -------------------------------------------------------------------------------

    def cli_env(self) -> dict[str, str]:
        return dict(os.environ, METAWSM_SERVER=self.url, NO_COLOR="1", COLUMNS="200")

    def cli(self, *args: str, cwd: Path | None = None, input: str | None = None,
            timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "metawsm", *args], cwd=cwd or self.repo, env=self.cli_env(),
                              capture_output=True, text=True, input=input, timeout=timeout,
                              stdin=None if input is not None else subprocess.DEVNULL)

    # -- tmux ------------------------------------------------------------------------------

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)

    def sessions(self) -> list[str]:
        result = self.tmux("ls", "-F", "#{session_name}")
        return result.stdout.split() if result.returncode == 0 else []

    def pane_pid(self, session: str) -> int | None:
        result = self.tmux("display-message", "-p", "-t", f"={session}:", "#{pane_pid}")
        return int(result.stdout.strip()) if result.returncode == 0 and result.stdout.strip().isdigit() else None

    def pane_log(self, session: str) -> str:
        """Everything the session's pane printed (the daemon pipes it into its logs directory)."""
        path = self.daemon_dir / ".metawsm" / "logs" / f"{session}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_pane_output(self, session: str, text: str, timeout: float = 20.0) -> str:
        """The pane's output once ``text`` is in it."""

        def printed() -> str:
            log = self.pane_log(session)
            return log if text in log else ""

        try:
            return wait_until(printed, timeout=timeout, interval=0.02, message=f"{text!r} in the pane of {session}")
        except TimeoutError as error:
            raise TimeoutError(f"{error}; pane output:\n{self.pane_log(session)}") from None

    def clients(self) -> list[str]:
        """The sessions terminals are attached to on this server, one entry per client."""
        result = self.tmux("list-clients", "-F", "#{client_session}")
        return result.stdout.split() if result.returncode == 0 else []


def path_without_metawsm(path: str | None = None) -> str:
    """``path`` (default: this process's PATH) minus every directory that has a ``metawsm``.

    A daemon given this PATH is like one started by full path (``.venv/bin/metawsm serve``)
    from a shell whose PATH does not include the virtualenv.
    """
    entries = (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep)
    kept = [entry for entry in entries if entry and not os.access(os.path.join(entry, "metawsm"), os.X_OK)]
    stripped = os.pathsep.join(kept)
    assert shutil.which("metawsm", path=stripped) is None
    return stripped


class PtySession:
    """A command on a pseudo-terminal (80x24): wait for what it prints, type answers."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # tmux draws to the terminal's size; a pty starts at 0x0.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.master = master
        self.process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                        close_fds=True, start_new_session=True)
        os.close(slave)
        self.output = b""
        self.position = 0

    def _pump(self) -> None:
        ready, _, _ = select.select([self.master], [], [], 0.02)
        if ready:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                pass

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def expect(self, text: str, timeout: float = 30.0) -> None:
        needle = text.encode()

        def seen() -> bool:
            self._pump()
            return needle in self.output[self.position:]

        wait_until(seen, timeout=timeout, interval=0.001,
                   message=f"prompt {text!r}; terminal so far: {self.output.decode(errors='replace')!r}")
        self.position = self.output.index(needle, self.position) + len(needle)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        """Wait for ``predicate`` while reading the terminal (a full pty would block the program)."""

        def check() -> Any:
            self._pump()
            return predicate()

        return wait_until(check, timeout=timeout, interval=0.005,
                          message=f"{what}; terminal so far: {self.output.decode(errors='replace')!r}")

    def send(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        def done() -> bool:
            self._pump()
            return self.process.poll() is not None

        wait_until(done, timeout=timeout, interval=0.01, message="the command to finish")
        for _ in range(20):
            before = len(self.output)
            self._pump()
            if len(self.output) == before:
                break
        os.close(self.master)
        return self.process.returncode, self.text()

    def close(self) -> None:
        """Kill the command if it is still running (test teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            os.close(self.master)
        except OSError:
            pass


def find_node(node: dict[str, Any], name: str) -> dict[str, Any] | None:
    if node.get("name") == name:
        return node
    for child in node.get("children", []):
        found = find_node(child, name)
        if found is not None:
            return found
    return None


@pytest.fixture
def runs_env(tmp_path: Path, redis_url: str, redis_namespace: str,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RunsEnv]]:
    """Factory: ``runs_env(agent=..., policy=..., repo=...)`` → a started :class:`RunsEnv`.

    Each env has its own directory, daemon, Redis namespace and tmux server (the first one uses
    the test's namespace and ``tmp_path`` as they are); all are closed on teardown.
    ``start=False`` returns the env without starting its daemon.
    """
    hermetic_git(tmp_path, monkeypatch)
    made: list[RunsEnv] = []

    def make(start: bool = True, **kwargs: Any) -> RunsEnv:
        n = len(made)
        # Further namespaces extend the test's, so its teardown removes their Redis keys too.
        where, namespace = (tmp_path, redis_namespace) if n == 0 else (tmp_path / f"env{n}", f"{redis_namespace}e{n}")
        env = RunsEnv(where, redis_url, namespace, **kwargs)
        made.append(env)
        return env.start() if start else env

    try:
        yield make
    finally:
        for env in made:
            env.close()
