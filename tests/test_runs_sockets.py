"""One tmux server per daemon: ``tmux.socket: "auto"`` names it after the daemon's database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from metawsm.runs.sockets import tmux_socket_for
from metawsm.waiting import wait_until
from support.agents import LONG_AGENT, find_node

AUTO = {"tmux": {"socket": "auto"}}
PLANNER = "the planner stores tmux.socket as configured: plan_run must call tmux_socket_for(policy.tmux.socket, db)"


def test_auto_is_metawsm_and_eight_hex_digits_of_the_databases_absolute_path(tmp_path: Path) -> None:
    db = tmp_path / ".metawsm" / "metawsm.db"
    expected = "metawsm-" + hashlib.sha1(str(db).encode()).hexdigest()[:8]
    assert tmux_socket_for("auto", db) == expected
    assert tmux_socket_for(" auto ", db) == expected


def test_a_socket_the_user_named_is_used_as_it_is(tmp_path: Path) -> None:
    for name in ("metawsm", "my-team", "Auto", "autobahn"):
        assert tmux_socket_for(name, tmp_path / "metawsm.db") == name


def test_the_same_database_reached_another_way_gives_the_same_socket(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "daemon" / ".metawsm" / "metawsm.db"
    db.parent.mkdir(parents=True)
    db.touch()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "daemon", target_is_directory=True)
    monkeypatch.chdir(tmp_path / "daemon")
    names = {tmux_socket_for("auto", path) for path in (db, Path(".metawsm/metawsm.db"),
                                                        link / ".metawsm" / "metawsm.db",
                                                        tmp_path / "daemon" / "x" / ".." / ".metawsm" / "metawsm.db")}
    assert len(names) == 1


def test_different_databases_give_different_sockets(tmp_path: Path) -> None:
    names = {tmux_socket_for("auto", tmp_path / f"d{n}" / "metawsm.db") for n in range(50)}
    assert len(names) == 50


def test_two_daemons_with_auto_sockets_keep_their_agents_on_separate_tmux_servers(runs_env) -> None:
    first, second = runs_env(agent=LONG_AGENT, policy=AUTO), runs_env(agent=LONG_AGENT, policy=AUTO)
    assert first.socket != second.socket
    assert first.socket == tmux_socket_for("auto", first.serve.db_path)
    one, two = first.start_run(ticket="T-1"), second.start_run(ticket="T-1")
    [agent_one], [agent_two] = one["agents"], two["agents"]
    assert agent_one["socket"] != "auto", PLANNER
    assert (agent_one["socket"], agent_two["socket"]) == (first.socket, second.socket)
    # Same ticket, same pattern: without separate servers the second would see the first's session.
    assert first.sessions() == [agent_one["session"]] and second.sessions() == [agent_two["session"]]
    assert first.wait_agent(one["run_id"], lambda a: a.get("health") == "healthy", "healthy")
    assert second.wait_agent(two["run_id"], lambda a: a.get("health") == "healthy", "healthy")

    # Stopping one daemon's run leaves the other daemon's agent alone.
    assert first.act(one["run_id"], "stop").status == 200
    assert first.sessions() == [] and second.sessions() == [agent_two["session"]]


def test_a_restarted_daemon_finds_its_auto_socket_again_and_re_attaches(runs_env) -> None:
    env = runs_env(agent=LONG_AGENT, policy=AUTO)
    run = env.start_run(ticket="T-2")
    run_id, session = run["run_id"], run["agents"][0]["session"]
    assert run["agents"][0]["socket"] == env.socket, PLANNER
    pid = env.wait_agent(run_id, lambda a: a.get("pane_pid"), "watched")["pane_pid"]
    env.serve.stop()
    assert env.sessions() == [session]  # the agent outlives its daemon

    env.serve.start()
    node = wait_until(lambda: find_node(env.actors(run_id), "TmuxAgent[agent]"), message="agent actor back")
    assert node["details"]["socket"] == env.socket and node["details"]["session"] == session
    assert f"re-attached to tmux session {session}" in env.serve.log()
    agent = env.wait_agent(run_id, lambda a: a.get("health") == "healthy", "healthy after re-attach")
    assert agent["pane_pid"] == pid and agent["socket"] == env.socket
    assert agent.get("restarts_used", 0) == 0 and env.pane_pid(session) == pid
    assert env.socket.startswith("metawsm-")
