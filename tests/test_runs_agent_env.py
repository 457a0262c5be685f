"""What an agent's session starts with: the METAWSM_* variables and a PATH whose `metawsm` is the
daemon's own program, even when the daemon's PATH has none (real files, real tmux, real daemon)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from metawsm import __version__
from metawsm.runs.agent_env import AgentIdentity, agent_env, install_shim, shim_dir, shim_text
from support.agents import PATH_AGENT, path_without_metawsm

IDENTITY = AgentIdentity(run_id="run_1", ticket="T-1", agent="agent", workspace="t-1-abcdef",
                         run_file="/w/t-1-abcdef/.metawsm/run.json")


def _run_shim(shim: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=path_without_metawsm())
    return subprocess.run([str(shim), *args], capture_output=True, text=True, env=env, timeout=60,
                          stdin=subprocess.DEVNULL)


# -- the shim ---------------------------------------------------------------------------------------


def test_the_shim_lives_next_to_the_database_and_runs_this_interpreters_metawsm(tmp_path: Path) -> None:
    bin_dir = shim_dir(tmp_path / ".metawsm" / "metawsm.db")
    assert bin_dir == tmp_path / ".metawsm" / "bin"
    shim = install_shim(bin_dir)
    assert shim == bin_dir / "metawsm"
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755
    assert shim.read_text() == shim_text(sys.executable)
    assert shim.read_text().splitlines()[-1] == f'exec {sys.executable} -m metawsm "$@"'
    result = _run_shim(shim, "--version")
    assert (result.returncode, result.stdout) == (0, f"metawsm, version {__version__}\n"), result.stderr


def test_an_up_to_date_shim_is_not_rewritten(tmp_path: Path) -> None:
    shim = install_shim(tmp_path / "bin")
    before = shim.stat()
    assert install_shim(tmp_path / "bin") == shim
    after = shim.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_stale_shim_is_replaced_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stale = bin_dir / "metawsm"
    stale.write_text("#!/bin/sh\nexec /old/venv/bin/python -m metawsm \"$@\"\n")
    old_inode = stale.stat().st_ino
    install_shim(bin_dir)
    assert stale.read_text() == shim_text(sys.executable)
    assert stale.stat().st_ino != old_inode  # a new file renamed over the old one, not rewritten in place
    assert sorted(p.name for p in bin_dir.iterdir()) == ["metawsm"]


def test_a_shim_with_the_right_text_but_another_mode_gets_its_mode_back(tmp_path: Path) -> None:
    shim = install_shim(tmp_path / "bin")
    shim.chmod(0o600)
    install_shim(tmp_path / "bin")
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755


def test_an_interpreter_path_with_spaces_and_quotes_still_runs(tmp_path: Path) -> None:
    # The same virtualenv seen through a directory whose name a shell would split and unquote.
    venv = Path(sys.prefix)
    odd = tmp_path / "it's a venv; $HOME"
    odd.symlink_to(venv, target_is_directory=True)
    python = odd / Path(sys.executable).relative_to(venv)
    shim = install_shim(tmp_path / "bin", python=str(python))
    result = _run_shim(shim, "--version")
    assert (result.returncode, result.stdout) == (0, f"metawsm, version {__version__}\n"), result.stderr


def test_a_shim_that_cannot_be_written_is_a_one_line_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    try:
        install_shim(blocked / "bin")
    except OSError as error:
        assert str(error).startswith(f"cannot write the metawsm shim {blocked / 'bin' / 'metawsm'}: ")
        assert "\n" not in str(error)
    else:
        raise AssertionError("install_shim wrote under a file")


# -- the environment ----------------------------------------------------------------------------------


def test_the_agent_env_names_the_agent_and_puts_the_shim_first_on_the_daemons_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    env = agent_env(IDENTITY, server_url="http://127.0.0.1:4000", bin_dir=bin_dir,
                    daemon_path=f"/usr/bin:{bin_dir}:/bin")
    assert env == {
        "METAWSM_RUN_ID": "run_1",
        "METAWSM_TICKET": "T-1",
        "METAWSM_AGENT": "agent",
        "METAWSM_WORKSPACE": "t-1-abcdef",
        "METAWSM_SERVER": "http://127.0.0.1:4000",
        "METAWSM_RUN_FILE": "/w/t-1-abcdef/.metawsm/run.json",
        "PATH": f"{bin_dir}:/usr/bin:/bin",  # listed once, first
    }


def test_the_agent_path_defaults_to_the_daemons_own_path(tmp_path: Path) -> None:
    env = agent_env(IDENTITY, server_url="http://x", bin_dir=tmp_path)
    assert env["PATH"].split(os.pathsep)[0] == str(tmp_path)
    assert env["PATH"].split(os.pathsep)[1:] == [p for p in os.environ["PATH"].split(os.pathsep)
                                                if p and p != str(tmp_path)]


# -- in a real pane --------------------------------------------------------------------------------


def test_an_agent_pane_runs_the_daemons_metawsm_although_the_daemons_path_has_none(runs_env) -> None:
    question = "Which database should I use?"
    env = runs_env(agent=PATH_AGENT, question=question)
    assert shutil.which("metawsm", path=env.serve.env["PATH"]) is None  # as if started by full path
    started = env.cli("run", "--ticket", "T-1", "--repos", env.repo_name, "--json")
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)["run"]
    run_id, session = run["run_id"], run["agents"][0]["session"]

    log = env.wait_pane_output(session, "signal exit status")
    shim = env.bin_dir / "metawsm"
    assert f"metawsm is {shim}\n" in log
    assert f"version: metawsm, version {__version__}\n" in log
    assert "signal exit status 0\n" in log, log
    assert shim.read_text() == shim_text(sys.executable)  # the daemon's interpreter (the tests' own)

    # The documented in-session command reached the daemon: the run waits for guidance.
    snap = env.wait_status(run_id, "awaiting_guidance")
    [pending] = snap["pending_guidance"]
    assert (pending["agent_name"], pending["question"]) == ("agent", question)
    pane_env = env.tmux("show-environment", "-t", f"={session}", "PATH").stdout.strip()
    assert pane_env.startswith(f"PATH={env.bin_dir}{os.pathsep}")
