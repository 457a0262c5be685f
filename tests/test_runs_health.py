"""Agent health: raw readings, hysteresis and the restart budget (pure logic, fake clock)."""

from __future__ import annotations

import pytest

from metawsm.policy import policy_from_mapping
from metawsm.runs.health import (
    DEAD,
    HEALTHY,
    IDLE,
    STALLED,
    STOPPED,
    HealthTracker,
    Observation,
    RestartBudget,
    Thresholds,
    next_poll_delay,
    raw_health,
    worse,
)

T0 = 1_000_000.0
TH = Thresholds(poll_seconds=1, idle_seconds=10, activity_stalled_seconds=30,
                progress_stalled_seconds=60, unhealthy_confirmations=2, restart_budget=3,
                restart_cooldown_seconds=5, restart_budget_reset_seconds=100)


def obs(at: float, **kw: object) -> Observation:
    kw.setdefault("last_activity", at)
    kw.setdefault("last_progress", at)
    return Observation(at=at, **kw)  # type: ignore[arg-type]  # keyword fields of several types


# -- thresholds ------------------------------------------------------------------------------


def test_thresholds_from_policy() -> None:
    policy = policy_from_mapping({
        "health": {"poll_seconds": 0.5, "idle_seconds": 7, "activity_stalled_seconds": 8,
                   "progress_stalled_seconds": 9},
        "operator": {"unhealthy_confirmations": 3, "restart_budget": 4,
                     "restart_cooldown_seconds": 5, "restart_budget_reset_seconds": 6,
                     "restart_stalled": True},
    })
    th = Thresholds.from_policy(policy)
    assert th == Thresholds(poll_seconds=0.5, idle_seconds=7, activity_stalled_seconds=8,
                            progress_stalled_seconds=9, unhealthy_confirmations=3,
                            restart_budget=4, restart_cooldown_seconds=5,
                            restart_budget_reset_seconds=6, restart_stalled=True)
    defaults = Thresholds.from_policy(policy_from_mapping({}))
    assert (defaults.poll_seconds, defaults.idle_seconds, defaults.unhealthy_confirmations) == (2, 300, 2)
    assert defaults.restart_budget_tracker().left == 3


# -- raw health ------------------------------------------------------------------------------


def test_raw_healthy_idle_stalled_by_activity() -> None:
    assert raw_health(obs(T0 + 5, last_activity=T0), TH, T0) == HEALTHY
    assert raw_health(obs(T0 + 9.9, last_activity=T0), TH, T0) == HEALTHY
    assert raw_health(obs(T0 + 10, last_activity=T0), TH, T0) == IDLE
    assert raw_health(obs(T0 + 29, last_activity=T0), TH, T0) == IDLE
    assert raw_health(obs(T0 + 30, last_activity=T0), TH, T0) == STALLED


def test_raw_stalled_by_progress_even_with_activity() -> None:
    busy_but_stuck = obs(T0 + 60, last_activity=T0 + 60, last_progress=T0)
    assert raw_health(busy_but_stuck, TH, T0) == STALLED
    assert raw_health(obs(T0 + 59, last_activity=T0 + 59, last_progress=T0), TH, T0) == HEALTHY


def test_raw_silence_counts_from_start_when_never_seen_or_older() -> None:
    never = Observation(at=T0 + 9, last_activity=None, last_progress=None)
    assert raw_health(never, TH, T0) == HEALTHY
    assert raw_health(Observation(at=T0 + 10), TH, T0) == IDLE
    # Activity older than the (re)start does not count against the agent.
    old = Observation(at=T0 + 5, last_activity=T0 - 1000, last_progress=T0 - 1000)
    assert raw_health(old, TH, T0) == HEALTHY


def test_raw_dead_and_stopped() -> None:
    assert raw_health(obs(T0 + 1, session_exists=False), TH, T0) == DEAD
    assert raw_health(obs(T0 + 1, pane_dead=True, exit_status=1), TH, T0) == DEAD
    assert raw_health(obs(T0 + 1, pane_dead=True, exit_status=0), TH, T0) == DEAD
    assert raw_health(obs(T0 + 1, pane_dead=True, exit_status=3, completed=True), TH, T0) == DEAD
    assert raw_health(obs(T0 + 1, pane_dead=True, exit_status=0, completed=True), TH, T0) == STOPPED
    assert raw_health(obs(T0 + 1, session_exists=False, completed=True), TH, T0) == DEAD
    assert raw_health(obs(T0 + 1, session_exists=False, exit_status=0, completed=True), TH,
                      T0) == STOPPED
    # Completion alone, with the agent still running, is not "stopped".
    assert raw_health(obs(T0 + 1, completed=True), TH, T0) == HEALTHY


def test_worse_order() -> None:
    assert worse(IDLE, HEALTHY) and worse(STALLED, IDLE) and worse(DEAD, STALLED)
    assert worse(STOPPED, STALLED) and not worse(STOPPED, DEAD) and not worse(HEALTHY, IDLE)


# -- hysteresis ------------------------------------------------------------------------------


def test_demotions_need_two_consecutive_polls() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    assert (tracker.health, tracker.since) == (HEALTHY, T0)
    quiet = {"last_activity": T0}
    assert tracker.observe(obs(T0 + 11, **quiet)) == HEALTHY  # first idle reading
    assert tracker.raw == IDLE
    assert tracker.observe(obs(T0 + 12, **quiet)) == IDLE
    assert tracker.since == T0 + 12
    assert tracker.observe(obs(T0 + 31, **quiet)) == IDLE  # first stalled reading
    assert tracker.observe(obs(T0 + 32, **quiet)) == STALLED
    assert tracker.observe(obs(T0 + 33, pane_dead=True, exit_status=1)) == STALLED
    assert tracker.observe(obs(T0 + 34, pane_dead=True, exit_status=1)) == DEAD
    assert tracker.since == T0 + 34


def test_one_bad_poll_does_not_flicker() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    for step in range(1, 6):
        # Every other poll the session looks gone (e.g. a tmux hiccup): never reported.
        gone = step % 2 == 1
        assert tracker.observe(obs(T0 + step, session_exists=not gone)) == HEALTHY
    assert tracker.since == T0


def test_streak_of_mixed_bad_polls_reports_the_mildest() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    quiet = {"last_activity": T0}
    assert tracker.observe(obs(T0 + 31, **quiet)) == HEALTHY  # stalled reading
    assert tracker.observe(obs(T0 + 32, session_exists=False)) == STALLED  # stalled + dead
    assert tracker.observe(obs(T0 + 33, session_exists=False)) == DEAD  # dead + dead


def test_promotions_are_immediate() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    quiet = {"last_activity": T0}
    tracker.observe(obs(T0 + 31, **quiet))
    tracker.observe(obs(T0 + 32, **quiet))
    assert tracker.health == STALLED
    assert tracker.observe(obs(T0 + 33, last_activity=T0 + 33 - 15)) == IDLE
    assert tracker.observe(obs(T0 + 34)) == HEALTHY
    assert tracker.since == T0 + 34


def test_dead_then_restarted_is_healthy_at_once() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    tracker.observe(obs(T0 + 1, pane_dead=True, exit_status=2))
    tracker.observe(obs(T0 + 2, pane_dead=True, exit_status=2))
    assert tracker.health == DEAD
    tracker.restarted(T0 + 100)
    # Old activity does not count against the restarted agent.
    assert tracker.observe(Observation(at=T0 + 101, last_activity=T0, last_progress=T0)) == HEALTHY


def test_stopped_confirms_like_a_demotion_and_is_not_dead() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    done = {"pane_dead": True, "exit_status": 0, "completed": True}
    assert tracker.observe(obs(T0 + 1, **done)) == HEALTHY
    assert tracker.observe(obs(T0 + 2, **done)) == STOPPED
    assert tracker.observe(obs(T0 + 3, **done)) == STOPPED


def test_stopped_vs_dead_streaks() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    tracker.observe(obs(T0 + 1, pane_dead=True, exit_status=0, completed=True))
    # A streak that is not all "stopped" reports dead.
    assert tracker.observe(obs(T0 + 2, session_exists=False)) == DEAD
    tracker2 = HealthTracker(TH, started_at=T0, health=STOPPED)
    assert tracker2.observe(obs(T0 + 1, session_exists=False)) == STOPPED
    assert tracker2.observe(obs(T0 + 2, session_exists=False)) == DEAD


def test_vanished_session_needs_confirmation() -> None:
    tracker = HealthTracker(TH, started_at=T0)
    assert tracker.observe(obs(T0 + 1, session_exists=False)) == HEALTHY
    assert tracker.observe(obs(T0 + 2, session_exists=False)) == DEAD


def test_confirmations_setting_is_honoured() -> None:
    th = Thresholds(idle_seconds=10, activity_stalled_seconds=30, progress_stalled_seconds=60,
                    unhealthy_confirmations=3)
    tracker = HealthTracker(th, started_at=T0)
    assert tracker.observe(obs(T0 + 1, session_exists=False)) == HEALTHY
    assert tracker.observe(obs(T0 + 2, session_exists=False)) == HEALTHY
    assert tracker.observe(obs(T0 + 3, session_exists=False)) == DEAD
    single = HealthTracker(Thresholds(unhealthy_confirmations=1), started_at=T0)
    assert single.observe(obs(T0 + 1, session_exists=False)) == DEAD


def test_unknown_initial_health_is_rejected() -> None:
    with pytest.raises(ValueError):
        HealthTracker(TH, started_at=T0, health="sleepy")


# -- restart budget --------------------------------------------------------------------------


def test_restart_budget_cooldown_and_exhaustion() -> None:
    budget = RestartBudget(3, cooldown_seconds=5, reset_seconds=100)
    assert (budget.used, budget.left) == (0, 3)
    assert budget.decision(T0) == (True, "restart 1 of 3")
    budget.record_restart(T0)
    allowed, reason = budget.decision(T0 + 1)
    assert not allowed and "cooldown" in reason
    assert budget.decision(T0 + 5)[0]
    budget.record_restart(T0 + 5)
    budget.record_restart(T0 + 10)
    assert (budget.used, budget.left) == (3, 0)
    assert budget.decision(T0 + 1000) == (False, "restart budget exhausted (3 of 3 used)")


def test_restart_budget_refills_after_a_continuous_healthy_period() -> None:
    budget = RestartBudget(2, cooldown_seconds=5, reset_seconds=100)
    budget.record_restart(T0)
    budget.record_restart(T0 + 10)
    assert budget.decision(T0 + 20)[0] is False
    assert budget.note_healthy(T0 + 20) is False
    assert budget.note_healthy(T0 + 109) is False  # 99 s healthy since the first healthy poll
    assert budget.used == 2
    assert budget.note_healthy(T0 + 120) is True
    assert (budget.used, budget.left) == (0, 2)
    assert budget.decision(T0 + 121) == (True, "restart 1 of 2")


def test_restart_budget_unhealthy_poll_resets_the_healthy_period() -> None:
    budget = RestartBudget(1, cooldown_seconds=1, reset_seconds=100)
    budget.record_restart(T0)
    budget.note_healthy(T0 + 1)
    budget.note_unhealthy(T0 + 50)
    assert budget.note_healthy(T0 + 60) is False
    assert budget.note_healthy(T0 + 150) is False  # only 90 s since healthy again
    assert budget.note_healthy(T0 + 160) is True
    assert budget.left == 1


def test_restart_budget_healthy_period_counts_from_the_last_restart() -> None:
    budget = RestartBudget(3, cooldown_seconds=1, reset_seconds=100)
    budget.note_healthy(T0)  # healthy before any restart
    budget.record_restart(T0 + 50)  # a restart interrupts the period
    assert budget.note_healthy(T0 + 120) is False
    assert budget.note_healthy(T0 + 220) is True


def test_restart_budget_restored_state() -> None:
    budget = RestartBudget(3, 60, 1800, used=2, last_restart=T0)
    assert budget.left == 1
    assert budget.decision(T0 + 10)[0] is False
    assert budget.decision(T0 + 60) == (True, "restart 3 of 3")


def test_quiet_agents_are_polled_less_often_but_never_past_a_threshold() -> None:
    t = Thresholds(poll_seconds=2, quiet_poll_seconds=10, idle_seconds=300, activity_stalled_seconds=900,
                   progress_stalled_seconds=1200)
    seen = Observation(at=1000.0, last_activity=990.0, last_progress=990.0)
    # Something new: the normal pace; then doubling while quiet, up to quiet_poll_seconds.
    assert [next_poll_delay(t, quiet, seen, started_at=0.0) for quiet in range(5)] == [2, 4, 8, 10, 10]
    # Idle is crossed at 990 + 300 = 1290: a poll at 1288 may not wait 10 s.
    near_idle = Observation(at=1288.0, last_activity=990.0, last_progress=1280.0)
    assert next_poll_delay(t, 4, near_idle, started_at=0.0) == 2.0
    almost = Observation(at=1284.0, last_activity=990.0, last_progress=1280.0)
    assert next_poll_delay(t, 4, almost, started_at=0.0) == 6.0
    # A threshold already crossed does not hold the pace down.
    idle = Observation(at=1300.0, last_activity=990.0, last_progress=1295.0)
    assert next_poll_delay(t, 4, idle, started_at=0.0) == 10.0
    # quiet_poll_seconds below poll_seconds (never valid in a policy) still never polls faster.
    fast = Thresholds(poll_seconds=2, quiet_poll_seconds=1)
    assert next_poll_delay(fast, 3, seen, started_at=0.0) == 2


def test_a_tracker_is_settled_only_when_no_demotion_waits_for_confirmation() -> None:
    tracker = HealthTracker(Thresholds(unhealthy_confirmations=2), started_at=0.0)
    assert tracker.settled
    tracker.observe(Observation(at=1.0, session_exists=False))
    assert not tracker.settled and tracker.health == HEALTHY
    tracker.observe(Observation(at=2.0, session_exists=False))
    assert tracker.settled and tracker.health == DEAD
