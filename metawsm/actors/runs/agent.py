"""TmuxAgent: owns one agent's tmux session — watches its health and restarts it within budget.

Health is polled every ``health.poll_seconds``: activity is the newest of the window's
``#{window_activity}`` and the log file's mtime; progress is the newest of a workspace
change (git status fingerprint or a new commit) and the agent's last control signal.
Demotions need ``operator.unhealthy_confirmations`` consecutive polls.  A dead agent (or a
stalled one, with ``operator.restart_stalled``) is restarted in place (``respawn-pane``) at
most ``operator.restart_budget`` times, ``restart_cooldown_seconds`` apart; when the budget
is spent the agent is ``failed`` and its Run decides what that means for the run.

Stopping this actor never kills the session (the daemon may just be restarting, and the
next incarnation re-attaches); only :class:`KillSession` does.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from metawsm.actors.errors import Refusal
from metawsm.actors.managed import ActorContext, ManagedActor
from metawsm.actors.operator.messages import AgentDecided, tell_operator
from metawsm.actors.runs.messages import AgentExited, AgentFailed, KillSession, StartSession
from metawsm.actors.runs.refusals import provider_errors_refused
from metawsm.clock import format_time, now_text
from metawsm.operator import rules
from metawsm.operator.model import Decision
from metawsm.runs import store
from metawsm.runs.agent_env import install_shim, with_agent_token
from metawsm.runs.health import HealthTracker, Observation, RestartBudget, Thresholds, next_poll_delay
from metawsm.runs.model import AgentSpec
from metawsm.runs.tmux import Tmux, TmuxError
from metawsm.store import schema_operator
from metawsm.store.db import write_transaction

log = logging.getLogger("metawsm.runs")


class _Poll(msgspec.Struct, frozen=True):
    """The health poll's tick; ticks of a superseded generation are ignored."""

    generation: int


# Requests, from the agent's Run: KillSession -> whether a session was killed, StartSession ->
# the session name.  Tells: _Poll, the agent's own health poll.
AgentMessage = _Poll | KillSession | StartSession


class AgentLaunch(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to (re)start the agent's session."""

    run_id: str
    ticket: str
    agent: AgentSpec
    workspace: str
    session: str
    socket: str
    workdir: str
    log_path: str
    env: dict[str, str]
    bin_dir: str = ""  # holds the metawsm shim that env's PATH starts with ("" = none)


def _epoch_text(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    from datetime import datetime

    return format_time(datetime.fromtimestamp(epoch, UTC))


class TmuxAgent(ManagedActor):
    kind: ClassVar[str] = "tmux_agent"

    def __init__(self, ctx: ActorContext, launch: AgentLaunch, progress: Any = None, fresh: bool = False) -> None:
        super().__init__(ctx)
        self.launch = launch
        self.fresh = fresh  # the Run just started the session: watching it is not a re-attach
        self.progress_probe = progress  # callable() -> str fingerprint of workspace changes, or None

    def setup(self) -> None:
        services = self.system.services
        self.conn = services.db.connect()
        self.tmux = Tmux(self.launch.socket)
        run_policy = store.load_run(self.conn, self.launch.run_id).spec.policy_or(services.policy)
        self.thresholds = Thresholds.from_policy(run_policy)  # the run's own, not today's file
        self.tracker = HealthTracker(self.thresholds, time.time())
        self.panes = services.pane_boards.board(self.launch.socket, max_age=min(1.0, self.thresholds.poll_seconds / 2))
        # The workspace's git fingerprint is taken when the pane showed activity since the last one,
        # else at least this often: a quiet agent costs no git process per poll.
        self._probe_gap = max(self.thresholds.poll_seconds, self.thresholds.progress_stalled_seconds / 10)
        self._probed_at = float("-inf")
        self._activity_at_probe: float | None = None
        row = self._row()
        self.budget = self._new_budget(used=row.restarts_used if row else 0)
        self.status = row.status if row else "pending"
        self.health = row.health if row else ""
        self.pane_pid: int | None = row.pane_pid if row else None
        self.last_activity: float | None = None
        self.last_progress: float | None = None
        self.started_at = time.time()
        self._fingerprint: str | None = None
        self._generation = 0
        self._last_write = 0.0
        self._activity_stored = False  # whether a last_activity_at has been written by this actor
        self._stored_times: tuple[float | None, float | None] = (None, None)  # activity, progress last written
        self._last_seen: tuple[Any, ...] = ()  # what the last poll saw: a poll that sees the same is quiet
        self._quiet_polls = 0
        self._next_delay = self.thresholds.poll_seconds
        self.watching = self.status not in ("stopped", "failed", "cleaned")
        if self.watching:
            self._refresh_shim()  # a daemon re-attaching may run from another interpreter than the last
            info = self.tmux.pane_info(self.launch.session)
            if info.session_exists:
                log.log(logging.DEBUG if self.fresh else logging.INFO, "agent %s@%s: %s tmux session %s",
                        self.launch.agent.name, self.launch.workspace,
                        "watching" if self.fresh else "re-attached to", self.launch.session)
                self.fresh = False
                self._set(status="running", pane_pid=info.pane_pid)
            self._schedule_polls()

    def teardown(self) -> None:
        self._generation += 1
        self.conn.close()

    def describe(self) -> dict[str, Any]:
        return {
            "session": self.launch.session,
            "socket": self.launch.socket,
            "workspace": self.launch.workspace,
            "pane_pid": self.pane_pid,
            "health": self.health,
            "status": self.status,
            "last_activity_at": _epoch_text(self.last_activity),
            "restarts_left": self.budget.left,
        }

    def handle(self, message: Any) -> Any:
        match message:
            case _Poll(generation=generation):
                if generation == self._generation and self.watching:
                    self._next_delay = self.thresholds.poll_seconds
                    self._poll()
                    self._arm_next_poll(generation)
                return None
            case KillSession():
                return self._kill()
            case StartSession():
                return self._start_afresh()
            case _:
                return super().handle(message)

    def _kill(self) -> bool:
        self.watching = False
        self._generation += 1
        with provider_errors_refused(f"agent {self._name()}: "):
            killed = self.tmux.kill_session(self.launch.session)
        self.panes.invalidate()
        self._set(status="stopped", health="", pane_pid=None)
        return killed

    def _start_afresh(self) -> str:
        self._generation += 1
        self.budget = self._new_budget()
        try:
            with provider_errors_refused(f"agent {self._name()} could not start its session: "):
                self.tmux.kill_session(self.launch.session)
                self._start_session()
        except Refusal as refusal:
            # Answered to the Run, which answers its caller; this actor stays, not watching
            # anything, until a resume or restart asks it again.
            self.watching = False
            self._set(status="failed", health="", pane_pid=None, last_error=refusal.message)
            raise
        self.tracker = HealthTracker(self.thresholds, self.started_at)
        self._set(restarts_used=0, last_error="")
        self.watching = True
        self._schedule_polls()
        return self.launch.session

    def _name(self) -> str:
        return f"{self.launch.agent.name}@{self.launch.workspace}"

    def _new_budget(self, used: int = 0) -> RestartBudget:
        t = self.thresholds
        return RestartBudget(t.restart_budget, t.restart_cooldown_seconds, t.restart_budget_reset_seconds,
                             used=used)

    # -- sessions -------------------------------------------------------------------------

    def _refresh_shim(self) -> None:
        """Rewrite the agent's ``metawsm`` shim if it is missing or stale.

        Best effort: the session is (re)started either way, and a shim that cannot be written
        only costs the agent its ``metawsm`` command, which the log line makes visible.
        """
        if not self.launch.bin_dir:
            return
        try:
            install_shim(Path(self.launch.bin_dir))
        except OSError as error:
            log.warning("agent %s@%s: %s", self.launch.agent.name, self.launch.workspace, error)

    def _session_env(self) -> dict[str, str]:
        """The launch environment plus a token minted for this start of the agent."""
        services, launch = self.system.services, self.launch
        tokens = services.tokens if services.auth_enabled else None
        return with_agent_token(launch.env, tokens, run_id=launch.run_id, ticket=launch.ticket,
                                agent=launch.agent.name)

    def _start_session(self) -> None:
        launch = self.launch
        self._refresh_shim()
        Path(launch.log_path).parent.mkdir(parents=True, exist_ok=True)
        info = self.tmux.new_session(launch.session, launch.workdir, launch.agent.command, self._session_env(),
                                     Path(launch.log_path))
        self.panes.invalidate()
        self.started_at = time.time()
        self._set(status="running", health="healthy", pane_pid=info.pane_pid)

    def _restart_session(self, reason: str) -> None:
        launch = self.launch
        self._refresh_shim()
        env = self._session_env()
        if self.tmux.has_session(launch.session):
            info = self.tmux.respawn(launch.session, launch.agent.command, env, launch.workdir)
        else:
            Path(launch.log_path).parent.mkdir(parents=True, exist_ok=True)
            info = self.tmux.new_session(launch.session, launch.workdir, launch.agent.command, env,
                                         Path(launch.log_path))
        self.panes.invalidate()
        now = time.time()
        self.budget.record_restart(now)
        self.started_at = now
        self.tracker.restarted(now)
        log.warning("agent %s@%s was %s; restarted it (%d restart(s) left)", launch.agent.name, launch.workspace,
                    reason, self.budget.left)
        self._set(status="running", health="healthy", pane_pid=info.pane_pid, restarts_used=self.budget.used,
                  last_error=f"restarted after it was {reason}")

    # -- health ---------------------------------------------------------------------------

    def _schedule_polls(self) -> None:
        """Start a chain of polls for this generation: each poll arms the next (see _arm_next_poll)."""
        self._quiet_polls = 0
        self.tell_self(_Poll(self._generation))

    def _arm_next_poll(self, generation: int) -> None:
        """One timer per agent, set after each poll: ``poll_seconds`` while something changes, longer
        while the pane stays quiet (runs.health.next_poll_delay), so idle agents cost little."""
        if generation != self._generation or not self.watching:
            return  # superseded (restart/kill/stop): the chain ends here
        self.tell_self_later(self._next_delay, _Poll(generation))

    def _poll(self) -> None:
        launch = self.launch
        now = time.time()
        try:
            info = self.panes.pane_info(launch.session)
        except TmuxError as error:
            log.debug("tmux poll failed for %s: %s", launch.session, error)
            return
        activity = info.window_activity
        try:
            activity = max(activity or 0.0, os.path.getmtime(launch.log_path)) or None
        except OSError:
            pass
        if activity is not None:
            self.last_activity = max(self.last_activity or 0.0, activity)
        self._observe_progress(now)
        control = self.conn.execute(
            "SELECT completion_signalled, last_signal_at FROM forum_control_state WHERE run_id = ? AND agent_name = ?",
            (launch.run_id, launch.agent.name),
        ).fetchone()
        completed = bool(control and control[0])
        if control and control[1]:
            from metawsm.clock import parse_time

            signal_at = parse_time(control[1]).timestamp()
            self.last_progress = max(self.last_progress or 0.0, signal_at)
        observation = Observation(
            at=now,
            session_exists=info.session_exists,
            pane_dead=info.pane_dead,
            exit_status=info.dead_status,
            last_activity=self.last_activity,
            last_progress=self.last_progress,
            completed=completed,
        )
        activity_before = self._last_seen
        health = self.tracker.observe(observation)
        self._last_seen = (self.last_activity, self.last_progress, info.pane_pid, health)
        settled = self.tracker.settled and health in ("healthy", "idle", "stalled")
        quiet = settled and activity_before == self._last_seen
        self._quiet_polls = self._quiet_polls + 1 if quiet else 0
        self._next_delay = next_poll_delay(self.thresholds, self._quiet_polls, observation, self.tracker.started_at)
        if health == "healthy":
            if self.budget.note_healthy(now):
                self._set(restarts_used=0)
        else:
            self.budget.note_unhealthy(now)
        changed = health != self.health or info.pane_pid != self.pane_pid
        self.pane_pid = info.pane_pid
        if health == "stopped":
            if self.status != "stopped":
                self.watching = False
                self._set(status="stopped", health="stopped", pane_pid=None)
                self._tell_run(AgentExited(agent=launch.agent.name, workspace=launch.workspace))
            return
        if health == "dead" or (health == "stalled" and self.thresholds.restart_stalled):
            self._on_unhealthy(health, now)
            return
        first_activity = self.last_activity is not None and not self._activity_stored
        if changed or first_activity or self._activity_refresh_due(now):
            self._set(health=health, pane_pid=info.pane_pid, last_activity_at=_epoch_text(self.last_activity),
                      last_progress_at=_epoch_text(self.last_progress))

    def _activity_refresh_due(self, now: float) -> bool:
        """Store newer activity or progress times now and then (at most every 5 s), even when health
        did not change; an agent whose times did not move writes nothing."""
        moved = (self.last_activity, self.last_progress) != self._stored_times
        return moved and now - self._last_write >= max(5.0, self.thresholds.poll_seconds)

    def _observe_progress(self, now: float) -> None:
        if self.progress_probe is None:
            return
        if self.last_activity == self._activity_at_probe and now - self._probed_at < self._probe_gap:
            return
        self._probed_at, self._activity_at_probe = now, self.last_activity
        try:
            fingerprint = self.progress_probe()
        except Exception:  # noqa: BLE001 - a git hiccup is not an agent problem
            return
        if fingerprint != self._fingerprint:
            if self._fingerprint is not None:
                self.last_progress = now
            self._fingerprint = fingerprint

    def _on_unhealthy(self, health: str, now: float) -> None:
        """The operator's ``auto_restart`` and ``escalate_blocked`` rules (docs/operator.md): this
        actor owns the restart, so it claims the decision, acts, and tells the operator."""
        allowed, reason = self.budget.decision(now)
        launch = self.launch
        incarnation = _epoch_text(self.started_at) or ""
        if allowed:
            decision = rules.auto_restart(self.conn, launch.run_id, launch.agent.name, launch.workspace, health,
                                          incarnation, self.budget.left - 1)
            decision_id = self._claim(decision)
            try:
                self._restart_session(health)
            except (TmuxError, OSError) as error:
                self._set(health=health, last_error=f"restart failed: {error}")
                if decision_id is not None:
                    with write_transaction(self.conn):
                        schema_operator.set_reason(self.conn, decision_id,
                                                   f"{decision.reason}; restart failed: {error}")
            else:
                if decision_id is not None:
                    with write_transaction(self.conn):
                        schema_operator.mark_executed(self.conn, decision_id)
            if decision_id is not None:
                tell_operator(self.system, AgentDecided(decision_id))
            return
        if "exhausted" in reason:
            self.watching = False
            message = f"{reason}; agent failed"
            log.error("agent %s@%s %s", launch.agent.name, launch.workspace, message)
            self._set(status="failed", health=health, last_error=message)
            decision_id = self._claim(rules.escalate_blocked(self.conn, launch.run_id, launch.agent.name,
                                                             launch.workspace, health, incarnation, reason))
            if decision_id is not None:
                tell_operator(self.system, AgentDecided(decision_id))
            self._tell_run(AgentFailed(agent=launch.agent.name, workspace=launch.workspace, reason=reason))
        elif health != self.health:
            self._set(health=health, last_error=f"{health}; {reason}")

    def _claim(self, decision: Decision) -> int | None:
        decision.at = now_text()
        with write_transaction(self.conn):
            return schema_operator.claim(self.conn, decision)

    # -- persistence ----------------------------------------------------------------------

    def _row(self) -> store.AgentRow | None:
        for row in store.agents(self.conn, self.launch.run_id):
            if row.agent_name == self.launch.agent.name and row.workspace == self.launch.workspace:
                return row
        return None

    def _set(self, **fields: Any) -> None:
        if "status" in fields:
            self.status = fields["status"]
        if "health" in fields:
            self.health = fields["health"]
        if "last_activity_at" not in fields and self.last_activity is not None:
            fields["last_activity_at"] = _epoch_text(self.last_activity)
        if fields.get("last_activity_at"):
            self._activity_stored = True
        if "last_activity_at" in fields or "last_progress_at" in fields:
            self._stored_times = (self.last_activity if "last_activity_at" in fields else self._stored_times[0],
                                  self.last_progress if "last_progress_at" in fields else self._stored_times[1])
        self._last_write = time.time()
        store.update_agent(self.conn, self.launch.run_id, self.launch.agent.name, self.launch.workspace, **fields)

    def _tell_run(self, message: Any) -> None:
        parent = self.path.rsplit("/", 1)[0]
        self.system.tell(parent, message)


__all__ = ["AgentLaunch", "TmuxAgent", "now_text"]
