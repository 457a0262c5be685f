"""Agent health: pure decisions from observations and a clock value the caller passes in.

No I/O here. The agent actor observes tmux (pane state, ``#{window_activity}``), the log
file's mtime and the workspace (commits, file changes, control signals), builds an
:class:`Observation` every ``health.poll_seconds`` and feeds it to a :class:`HealthTracker`;
when the reported health is ``dead`` (or ``stalled`` with ``operator.restart_stalled``) it
asks its :class:`RestartBudget` whether a restart is allowed.

Health values, from best to worst: ``healthy`` < ``idle`` < ``stalled`` < ``dead``.
``stopped`` is the good end of an agent's life (it exited 0 after signalling completion);
it ranks with ``dead`` (the agent is not running) but is never confused with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from metawsm.policy import Policy

__all__ = [
    "DEAD",
    "HEALTH_VALUES",
    "HEALTHY",
    "IDLE",
    "STALLED",
    "STOPPED",
    "HealthTracker",
    "Observation",
    "RestartBudget",
    "Thresholds",
    "raw_health",
    "worse",
]

HEALTHY = "healthy"
IDLE = "idle"
STALLED = "stalled"
DEAD = "dead"
STOPPED = "stopped"
HEALTH_VALUES = (HEALTHY, IDLE, STALLED, DEAD, STOPPED)

_RANK = {HEALTHY: 0, IDLE: 1, STALLED: 2, DEAD: 3, STOPPED: 3}


def worse(a: str, b: str) -> bool:
    """Whether health ``a`` is worse than ``b`` (``stopped`` ranks with ``dead``)."""
    return _RANK[a] > _RANK[b]


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    """The health and restart knobs of the policy, flattened (seconds unless noted)."""

    poll_seconds: float = 2
    quiet_poll_seconds: float = 10
    idle_seconds: float = 300
    activity_stalled_seconds: float = 900
    progress_stalled_seconds: float = 1200
    unhealthy_confirmations: int = 2
    restart_budget: int = 3
    restart_cooldown_seconds: float = 60
    restart_budget_reset_seconds: float = 1800
    restart_stalled: bool = False

    @classmethod
    def from_policy(cls, policy: Policy) -> Thresholds:
        h, o = policy.health, policy.operator
        return cls(
            poll_seconds=h.poll_seconds,
            quiet_poll_seconds=h.quiet_poll_seconds,
            idle_seconds=h.idle_seconds,
            activity_stalled_seconds=h.activity_stalled_seconds,
            progress_stalled_seconds=h.progress_stalled_seconds,
            unhealthy_confirmations=o.unhealthy_confirmations,
            restart_budget=o.restart_budget,
            restart_cooldown_seconds=o.restart_cooldown_seconds,
            restart_budget_reset_seconds=o.restart_budget_reset_seconds,
            restart_stalled=o.restart_stalled,
        )

    def restart_budget_tracker(self) -> RestartBudget:
        return RestartBudget(self.restart_budget, self.restart_cooldown_seconds,
                             self.restart_budget_reset_seconds)


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """One poll of an agent. Times are epoch seconds; ``None`` means "never seen"."""

    at: float
    session_exists: bool = True
    pane_dead: bool = False
    exit_status: int | None = None
    last_activity: float | None = None  # newest of #{window_activity} and the log's mtime
    last_progress: float | None = None  # newest of file changes, commits, control signals
    completed: bool = False  # the agent has signalled completion


def raw_health(obs: Observation, thresholds: Thresholds, started_at: float) -> str:
    """The health one observation shows on its own (no hysteresis).

    * ``stopped``: the pane exited with status 0 (or the session is gone with a known exit
      status 0) after the agent signalled completion;
    * ``dead``: the session is gone or its pane is dead, otherwise;
    * ``stalled``: no activity for ``activity_stalled_seconds`` or no progress for
      ``progress_stalled_seconds``;
    * ``idle``: no activity for ``idle_seconds``;
    * ``healthy`` otherwise.

    Silence is measured from ``max(started_at, last_x)``, so a fresh (or just restarted)
    agent gets the full thresholds before it is judged.
    """
    if not obs.session_exists or obs.pane_dead:
        if obs.completed and obs.exit_status == 0:
            return STOPPED
        return DEAD
    activity = max(started_at, obs.last_activity if obs.last_activity is not None else started_at)
    progress = max(started_at, obs.last_progress if obs.last_progress is not None else started_at)
    quiet = obs.at - activity
    if quiet >= thresholds.activity_stalled_seconds:
        return STALLED
    if obs.at - progress >= thresholds.progress_stalled_seconds:
        return STALLED
    if quiet >= thresholds.idle_seconds:
        return IDLE
    return HEALTHY


def next_poll_delay(thresholds: Thresholds, quiet_polls: int, obs: Observation, started_at: float) -> float:
    """How long an agent may go unpolled after ``obs``, when ``quiet_polls`` polls in a row saw nothing new.

    ``poll_seconds`` after anything new (``quiet_polls`` 0), then doubling up to
    ``quiet_poll_seconds``; but never past the moment the agent's silence would cross its idle or
    stalled threshold, so a quiet agent's health still changes on time.
    """
    base = thresholds.poll_seconds
    if quiet_polls <= 0:
        return base
    delay = min(base * 2 ** min(quiet_polls, 30), max(base, thresholds.quiet_poll_seconds))
    activity = max(started_at, obs.last_activity if obs.last_activity is not None else started_at)
    progress = max(started_at, obs.last_progress if obs.last_progress is not None else started_at)
    for crossing in (activity + thresholds.idle_seconds, activity + thresholds.activity_stalled_seconds,
                     progress + thresholds.progress_stalled_seconds):
        if crossing > obs.at:
            delay = min(delay, max(base, crossing - obs.at))
    return delay


class HealthTracker:
    """Reported health with hysteresis, one per agent.

    * Promotions (to a better value) are reported at once.
    * A demotion is reported only once ``unhealthy_confirmations`` consecutive polls show it
      or something worse; the value reported is the best of those polls (``healthy``, then
      ``stalled``, ``dead`` → ``stalled``; one more ``dead`` → ``dead``). A single bad poll
      never flickers the reported health.
    * ``stopped`` (and ``dead`` from a vanished session) confirm the same way; ``stopped`` is
      reported only when all the confirming polls say ``stopped``.

    ``health`` is the reported value, ``since`` the observation time it took that value
    (``started_at`` at first), ``raw`` the last unconfirmed reading.
    """

    def __init__(self, thresholds: Thresholds, started_at: float, health: str = HEALTHY) -> None:
        if health not in _RANK:
            raise ValueError(f"unknown health {health!r}")
        self.thresholds = thresholds
        self.started_at = started_at
        self.health = health
        self.since = started_at
        self.raw: str | None = None
        self._streak: list[str] = []  # consecutive raw readings worse than / unlike `health`

    @property
    def confirmations(self) -> int:
        return max(1, int(self.thresholds.unhealthy_confirmations))

    @property
    def settled(self) -> bool:
        """No demotion is waiting for confirmation (the last reading agreed with the reported health)."""
        return not self._streak

    def restarted(self, at: float) -> None:
        """The agent was (re)started at ``at``: thresholds count from there again."""
        self.started_at = at
        self._streak.clear()

    def observe(self, obs: Observation) -> str:
        raw = raw_health(obs, self.thresholds, self.started_at)
        self.raw = raw
        if raw == self.health:
            self._streak.clear()
            return self.health
        if worse(self.health, raw):  # promotion
            self._set(raw, obs.at)
            return self.health
        # A demotion, or a change between dead and stopped: wait for confirmation.
        self._streak.append(raw)
        del self._streak[: -self.confirmations]
        if len(self._streak) >= self.confirmations:
            if all(value == STOPPED for value in self._streak):
                candidate = STOPPED
            else:
                floor = min(_RANK[value] for value in self._streak)
                candidate = {0: HEALTHY, 1: IDLE, 2: STALLED, 3: DEAD}[floor]
            if candidate != self.health:
                # Readings in the streak that were worse than the new value keep counting
                # towards the next demotion (they are consecutive polls showing it).
                tail: list[str] = []
                for value in reversed(self._streak):
                    if not worse(value, candidate) and value != STOPPED:
                        break
                    tail.insert(0, value)
                self._set(candidate, obs.at)
                self._streak = tail if candidate != STOPPED else []
        return self.health

    def _set(self, health: str, at: float) -> None:
        self.health = health
        self.since = at
        self._streak.clear()


class RestartBudget:
    """How many restarts an agent may still get, and when.

    At most ``budget`` restarts, ``cooldown_seconds`` apart; after the agent has been healthy
    continuously for ``reset_seconds`` since the last restart, the budget refills. Call
    :meth:`note_healthy` on every healthy poll and :meth:`note_unhealthy` on every other one
    (without the latter, the healthy period counts from the first healthy poll after the
    restart). ``used``/``last_restart`` may be given to restore a persisted budget.
    """

    def __init__(self, budget: int, cooldown_seconds: float, reset_seconds: float, *,
                 used: int = 0, last_restart: float | None = None) -> None:
        self.budget = int(budget)
        self.cooldown_seconds = float(cooldown_seconds)
        self.reset_seconds = float(reset_seconds)
        self.used = int(used)
        self.last_restart = last_restart
        self.healthy_since: float | None = None

    @property
    def left(self) -> int:
        return max(0, self.budget - self.used)

    def decision(self, now: float) -> tuple[bool, str]:
        """``(allowed, reason)``: refused when exhausted or still cooling down."""
        if self.used >= self.budget:
            return False, f"restart budget exhausted ({self.used} of {self.budget} used)"
        if self.last_restart is not None:
            wait = self.last_restart + self.cooldown_seconds - now
            if wait > 0:
                return False, (f"restart cooldown: {wait:.0f}s left of "
                               f"{self.cooldown_seconds:g}s since the last restart")
        return True, f"restart {self.used + 1} of {self.budget}"

    def record_restart(self, now: float) -> None:
        self.used += 1
        self.last_restart = now
        self.healthy_since = None

    def note_healthy(self, now: float) -> bool:
        """Record a healthy poll; returns True when this refilled the budget."""
        if self.healthy_since is None:
            self.healthy_since = now
        if self.used == 0:
            return False
        start = self.healthy_since
        if self.last_restart is not None:
            start = max(start, self.last_restart)
        if now - start >= self.reset_seconds:
            self.used = 0
            return True
        return False

    def note_unhealthy(self, now: float | None = None) -> None:
        """Record a poll that was not healthy: the healthy period starts over."""
        self.healthy_since = None

    def __repr__(self) -> str:
        return f"RestartBudget(used={self.used}, budget={self.budget})"
