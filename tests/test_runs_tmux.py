"""The tmux layer against a real, private tmux server (one ``-L`` socket per test)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from metawsm.runs.pane_board import PaneBoard
from metawsm.runs.tmux import PaneInfo, Tmux, TmuxError, sanitize_session_name, session_name
from metawsm.waiting import wait_until


@pytest.fixture
def tmux(tmux_socket: str) -> Tmux:
    return Tmux(tmux_socket)


def _log_contains(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text()


# -- names -----------------------------------------------------------------------------------


def test_sanitize_session_name() -> None:
    assert sanitize_session_name("agent-T.1:ws") == "agent-T-1-ws"
    assert sanitize_session_name("a  b//c") == "a-b-c"
    assert sanitize_session_name("--x--") == "x"
    assert sanitize_session_name("ok_name-1") == "ok_name-1"
    assert sanitize_session_name("...") == "session"
    assert sanitize_session_name("") == "session"
    long = sanitize_session_name("x" * 200)
    assert len(long) <= 64 and long == "x" * 64
    assert not sanitize_session_name("a" * 63 + ".b").endswith("-")


def test_session_name_applies_pattern() -> None:
    assert session_name("{agent}-{workspace}", "agent", "T-1.2") == "agent-T-1-2"
    assert session_name("mw_{workspace}_{agent}", "a:b", "ws") == "mw_ws_a-b"
    assert session_name("{agent}-{oops}", "a", "w") == "a--oops"


# -- lifecycle -------------------------------------------------------------------------------


def test_new_session_env_log_and_dead_pane(tmux: Tmux, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "agent.log"  # parent does not exist yet
    info = tmux.new_session(
        "agent-ws",
        tmp_path,
        ["sh", "-c", 'echo "run=$METAWSM_RUN_ID"; pwd; sleep 0.3; exit 7'],
        {"METAWSM_RUN_ID": "r-123", "METAWSM_AGENT": "agent"},
        log,
    )
    assert info.session_exists and info.pane_pid and info.pane_pid > 0
    assert tmux.has_session("agent-ws")
    assert tmux.list_sessions() == ["agent-ws"]
    wait_until(lambda: _log_contains(log, "run=r-123"), message="env reached the agent's log")
    # remain-on-exit: the pane stays, dead, with the exit status, and the output stays in the log.
    dead = wait_until(lambda: (i := tmux.pane_info("agent-ws")).pane_dead and i,
                      message="pane dies when the agent exits")
    assert dead.session_exists and dead.dead_status == 7
    assert str(tmp_path) in log.read_text()
    assert tmux.has_session("agent-ws")


def test_agent_that_exits_at_once_keeps_pane_and_output(tmux: Tmux, tmp_path: Path) -> None:
    log = tmp_path / "quick.log"
    tmux.new_session("quick", tmp_path, ["sh", "-c", "echo bye-now; exit 0"], {}, log)
    info = wait_until(lambda: (i := tmux.pane_info("quick")).pane_dead and i)
    assert info.dead_status == 0
    wait_until(lambda: _log_contains(log, "bye-now"), message="output of a short-lived agent")


def test_killed_agent_reports_its_signal(tmux: Tmux, tmp_path: Path) -> None:
    info = tmux.new_session("victim", tmp_path, ["sleep", "30"])
    assert info.pane_pid and not info.pane_dead
    os.kill(info.pane_pid, signal.SIGKILL)
    dead = wait_until(lambda: (i := tmux.pane_info("victim")).pane_dead and i)
    assert (dead.dead_signal, dead.dead_status) == (signal.SIGKILL, None)


def test_arguments_reach_the_agent_verbatim(tmux: Tmux, tmp_path: Path) -> None:
    """Trailing ';' (tmux's separator), '#' (tmux formats) and spaces pass through unchanged."""
    workdir = tmp_path / "dir #1"
    workdir.mkdir()
    log = tmp_path / "log dir" / "a #b.log"
    argv = ["sh", "-c", 'printf "<%s>\\n" "$@" "$V"; pwd', "sh", "x;", ";", "a\\;", "#{pane_id}"]
    tmux.new_session("verbatim", workdir, argv, {"V": "v;#{session_name}"}, log)
    wait_until(lambda: _log_contains(log, str(workdir)), message="pwd in the log")
    text = log.read_text()
    for expected in ("<x;>", "<;>", "<a\\;>", "<#{pane_id}>", "<v;#{session_name}>"):
        assert expected in text


def test_single_element_argv_runs_through_the_shell(tmux: Tmux, tmp_path: Path) -> None:
    log = tmp_path / "shell.log"
    tmux.new_session("shellcmd", tmp_path, ["echo one && echo two"], None, log)
    wait_until(lambda: _log_contains(log, "two"), message="shell command line ran")


def test_duplicate_name_is_an_error(tmux: Tmux, tmp_path: Path) -> None:
    tmux.new_session("dup", tmp_path, ["sleep", "30"])
    with pytest.raises(TmuxError, match="duplicate session: dup") as err:
        tmux.new_session("dup", tmp_path, ["sleep", "30"])
    assert "\n" not in str(err.value) and tmux.socket in str(err.value)


def test_invalid_names_and_workdirs_are_refused(tmux: Tmux, tmp_path: Path) -> None:
    with pytest.raises(TmuxError, match="invalid tmux session name"):
        tmux.new_session("a.b", tmp_path, ["sleep", "1"])
    with pytest.raises(TmuxError, match="does not exist"):
        tmux.new_session("nowhere", tmp_path / "missing", ["sleep", "1"])
    with pytest.raises(TmuxError, match="empty command"):
        tmux.new_session("empty", tmp_path, [])


def test_targets_are_exact(tmux: Tmux, tmp_path: Path) -> None:
    tmux.new_session("abc", tmp_path, ["sleep", "30"])
    assert not tmux.has_session("ab")
    assert tmux.pane_info("ab") == PaneInfo(session_exists=False)
    assert tmux.kill_session("ab") is False
    with pytest.raises(TmuxError):
        tmux.send_keys("ab", "echo hi")
    with pytest.raises(TmuxError):
        tmux.capture("ab")
    tmux.new_session("ab", tmp_path, ["sleep", "30"])
    assert sorted(tmux.list_sessions()) == ["ab", "abc"]
    assert tmux.kill_session("ab") is True
    assert tmux.list_sessions() == ["abc"]
    assert tmux.has_session("abc") and tmux.pane_info("abc").session_exists


def test_window_activity_advances_when_a_detached_pane_prints(tmux: Tmux, tmp_path: Path) -> None:
    tmux.new_session("busy", tmp_path,
                     ["sh", "-c", "while true; do echo tick; sleep 0.2; done"])
    first = wait_until(lambda: tmux.pane_info("busy").window_activity,
                       message="window_activity is reported")
    # The format has a resolution of one second, so allow a few.
    later = wait_until(lambda: (a := tmux.pane_info("busy").window_activity) and a > first and a,
                       timeout=6, message="window_activity moves while the detached pane prints")
    assert later > first


def test_respawn_restarts_a_dead_pane_in_the_same_session(tmux: Tmux, tmp_path: Path) -> None:
    log = tmp_path / "respawn.log"
    tmux.new_session("phoenix", tmp_path, ["sh", "-c", "echo first-life; exit 3"], {}, log)
    dead = wait_until(lambda: (i := tmux.pane_info("phoenix")).pane_dead and i)
    assert dead.dead_status == 3
    info = tmux.respawn("phoenix", ["sh", "-c", 'echo "second-life $GEN"; sleep 30'],
                        {"GEN": "2"}, tmp_path)
    assert info.session_exists and not info.pane_dead and info.pane_pid != dead.pane_pid
    # The log pipe was re-established (from the log recorded at new_session).
    wait_until(lambda: _log_contains(log, "second-life 2"), message="respawned output is logged")
    assert "first-life" in log.read_text()
    assert tmux.list_sessions() == ["phoenix"]
    # A live pane is killed and replaced (-k), still one session.
    again = tmux.respawn("phoenix", ["sh", "-c", "echo third-life; sleep 30"])
    assert again.pane_pid != info.pane_pid
    wait_until(lambda: _log_contains(log, "third-life"))
    assert log.read_text().count("second-life 2") == 1  # no duplicate pipes


def test_respawn_of_missing_session_fails(tmux: Tmux, tmp_path: Path) -> None:
    tmux.new_session("other", tmp_path, ["sleep", "30"])
    with pytest.raises(TmuxError):
        tmux.respawn("missing", ["sleep", "1"])


def test_send_keys_and_capture(tmux: Tmux, tmp_path: Path) -> None:
    tmux.new_session("typing", tmp_path, ["sh"], {"PS1": "$ "})
    tmux.send_keys("typing", "echo typed-$((40+2));")
    wait_until(lambda: "typed-42" in tmux.capture("typing"), message="typed command ran")
    tmux.send_keys("typing", "-n", enter=False)
    wait_until(lambda: tmux.capture("typing").endswith("-n"), message="literal text, no Enter")
    tmux.send_keys("typing", "", enter=True)
    for n in range(5):
        tmux.send_keys("typing", f"echo line-{n}")
    wait_until(lambda: "line-4" in tmux.capture("typing"))
    last = tmux.capture("typing", lines=2)
    assert len(last.splitlines()) <= 2 and "line-4" in last


def test_kill_server_and_queries_without_a_server(tmux: Tmux, tmp_path: Path) -> None:
    assert tmux.list_sessions() == []
    assert not tmux.has_session("x")
    assert tmux.pane_info("x") == PaneInfo(session_exists=False)
    assert tmux.kill_session("x") is False
    tmux.kill_server()  # nothing running: fine
    tmux.new_session("s1", tmp_path, ["sleep", "30"])
    tmux.new_session("s2", tmp_path, ["sleep", "30"])
    tmux.kill_server()
    assert tmux.list_sessions() == []


def test_available_and_missing_binary(tmux_socket: str) -> None:
    assert Tmux(tmux_socket).available()
    missing = Tmux(tmux_socket, binary="tmux-does-not-exist")
    assert not missing.available()
    with pytest.raises(TmuxError, match="not found"):
        missing.list_sessions()


def test_user_tmux_environment_is_not_inherited(tmux: Tmux, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Running the daemon from inside tmux must not confuse the private server.
    monkeypatch.setenv("TMUX", "/tmp/some-other-server,1,0")
    tmux.new_session("nested", tmp_path, ["sleep", "30"])
    assert tmux.has_session("nested")
    assert os.environ["TMUX"]  # the caller's environment is left as it was


def _program(directory: Path, name: str, line: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    program = directory / name
    program.write_text(f'#!/bin/sh\necho "{line} $1 PATH=$PATH"\nexec sleep 30\n')
    program.chmod(0o755)


def test_a_path_in_env_is_the_panes_path_and_finds_its_program(tmux: Tmux, tmp_path: Path) -> None:
    # tmux would give the pane the PATH of the client process, not the -e PATH; the agent's wins.
    first, second = tmp_path / "first-bin", tmp_path / "second-bin"
    _program(first, "greet", "first")
    _program(second, "greet", "second")
    assert str(first) not in os.environ["PATH"]
    log = tmp_path / "greet.log"
    path = f"{first}:/usr/bin:/bin"
    tmux.new_session("greeter", tmp_path, ["greet", "hello"], {"PATH": path}, log)
    wait_until(lambda: _log_contains(log, f"first hello PATH={path}\n"), message="the program found on the agent's PATH")
    path = f"{second}:/usr/bin:/bin"
    tmux.respawn("greeter", ["greet", "again"], {"PATH": path})
    wait_until(lambda: _log_contains(log, f"second again PATH={path}\n"), message="respawn uses the new PATH")


def test_one_listing_answers_every_session_and_a_new_session_is_asked_directly(tmux: Tmux, tmp_path: Path) -> None:
    assert tmux.panes() == {}  # no server yet
    first = tmux.new_session("a-one", tmp_path, ["sleep", "60"], {}, tmp_path / "one.log")
    second = tmux.new_session("a-two", tmp_path, ["sh", "-c", "exit 3"], {}, tmp_path / "two.log")
    wait_until(lambda: tmux.pane_info("a-two").pane_dead, message="the second pane to die")
    board = PaneBoard(tmux, max_age=60.0)
    assert board.pane_info("a-one").pane_pid == first.pane_pid
    dead = board.pane_info("a-two")
    assert dead.pane_dead and dead.dead_status == 3 and dead.pane_pid == second.pane_pid
    assert board.listings == 1  # both answered from one list-panes

    # Started after the listing: not in it, so asked about directly (never reported as gone).
    third = tmux.new_session("a-three", tmp_path, ["sleep", "60"], {}, tmp_path / "three.log")
    assert board.pane_info("a-three").pane_pid == third.pane_pid and board.listings == 1
    # A listing is reused for at most max_age (agents use at most 1 s): a killed session shows at
    # the next listing, and asked about directly once it is missing from it.
    tmux.kill_session("a-one")
    board.invalidate()
    assert board.pane_info("a-one").session_exists is False and board.listings == 2
    assert board.pane_info("a-three").session_exists and board.listings == 2
