"""Runs: the data shapes (spec, brief, status machine, snapshots) shared by actors, API and CLI."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

from metawsm.actors.errors import Refusal
from metawsm.policy import WORKSPACE_STRATEGIES, Policy
from metawsm.text import Line, Text


class RunStatus(str, enum.Enum):
    CREATED = "created"
    PLANNING = "planning"
    RUNNING = "running"
    AWAITING_GUIDANCE = "awaiting_guidance"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CLOSING = "closing"
    CLOSED = "closed"


S = RunStatus
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.CREATED: frozenset({S.PLANNING, S.FAILED, S.STOPPING}),
    S.PLANNING: frozenset({S.RUNNING, S.FAILED, S.STOPPING}),
    S.RUNNING: frozenset({S.AWAITING_GUIDANCE, S.COMPLETED, S.PAUSED, S.FAILED, S.STOPPING, S.CLOSING}),
    S.AWAITING_GUIDANCE: frozenset({S.RUNNING, S.COMPLETED, S.PAUSED, S.FAILED, S.STOPPING}),
    S.PAUSED: frozenset({S.RUNNING, S.FAILED, S.STOPPING}),
    S.COMPLETED: frozenset({S.CLOSING, S.RUNNING, S.AWAITING_GUIDANCE, S.STOPPING}),
    S.FAILED: frozenset({S.PLANNING, S.RUNNING, S.STOPPING, S.CLOSING}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset({S.PLANNING, S.RUNNING, S.CLOSING}),
    S.CLOSING: frozenset({S.CLOSED, S.FAILED, S.COMPLETED}),
    S.CLOSED: frozenset(),
}
TERMINAL = frozenset({S.CLOSED})
LIVE = frozenset({S.RUNNING, S.AWAITING_GUIDANCE, S.COMPLETED, S.PAUSED})  # agents should be up


class RunError(Refusal):
    """A refused run command (HTTP 400 unless the class or the raise says otherwise)."""

    code = "run_failed"


class RunNotFound(RunError):
    code = "run_not_found"
    status = 404


class GateBlocked(RunError):
    """A close gate refused: HTTP 409, and exit 1 in the CLI (a runtime condition, not bad
    usage; ``close_blocked`` is in :data:`metawsm.cli.exit_codes.EXCEPTIONS`)."""

    code = "close_blocked"
    status = 409


class RunStateRefused(RunError):
    """A run action that cannot apply in the run's current status (resume a closing run,
    restart one whose agents never started, cleanup of an active run): HTTP 409.  The message
    names the status and what the action needs; nothing was changed."""

    code = "run_transition_refused"
    status = 409


class RunGone(RunError):
    """A run action that needs what is no longer there: HTTP 410.  ``run_cleaned_up`` when
    ``cleanup`` removed the run's workspaces, ``workspace_gone`` when a workspace directory
    vanished otherwise.  Nothing was changed; close (and cleanup) still work."""

    code = "run_cleaned_up"
    status = 410


def transition_allowed(from_status: str, to_status: str) -> bool:
    return RunStatus(to_status) in TRANSITIONS[RunStatus(from_status)]


def transition_error(run_id: str, from_status: str, to_status: str) -> RunError:
    return RunStateRefused(f"run {run_id}: transition {from_status} -> {to_status} is not allowed")


# -- spec ---------------------------------------------------------------------------------------


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    profile: str
    runner: str
    command: list[str]  # argv, resolved at run creation and frozen


class QA(msgspec.Struct, frozen=True, kw_only=True):
    question: Text
    answer: Text


class Brief(msgspec.Struct, frozen=True, kw_only=True):
    goal: str
    scope: str
    done_criteria: str
    constraints: str
    merge_intent: str
    qa: list[QA] = []


BRIEF_FIELDS: tuple[tuple[str, str], ...] = (
    ("goal", "Goal"),
    ("scope", "Scope"),
    ("done_criteria", "Done criteria"),
    ("constraints", "Constraints"),
    ("merge_intent", "Merge intent"),
)


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    run_id: str
    mode: Literal["run", "bootstrap"]
    tickets: list[str]
    repos: list[str]
    doc_home_repo: str
    doc_seed_mode: str
    base_branch: str
    workspace_strategy: str
    agents: list[AgentSpec]
    policy_path: str
    dry_run: bool
    created_at: str
    cwd: str  # where repo names are resolved (the caller's directory)
    server_url: str
    workspace_root: str
    workspace_provider: str
    docs_provider: str
    tmux_socket: str
    session_pattern: str
    # The policy the run was planned with, kept for its whole life (health thresholds, restart
    # budget, step retries), so editing the file only changes later runs. The Redis password is
    # masked: a run never reads the forum section, the daemon's own applies. None in runs
    # stored before the policy was kept.
    policy: Policy | None = None

    def policy_or(self, daemon_policy: Policy) -> Policy:
        """The run's own policy; the daemon's for a run stored without one."""
        return self.policy if self.policy is not None else daemon_policy


# -- requests -----------------------------------------------------------------------------------

NonEmpty = Annotated[Line, msgspec.Meta(min_length=1)]
RUN_MODES = ("run", "bootstrap")


class BriefRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    goal: Text = ""
    scope: Text = ""
    done_criteria: Text = ""
    constraints: Text = ""
    merge_intent: Text = ""
    qa: list[QA] = []


class RunRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /api/v1/runs: start a run (or only plan it with ``dry_run``).

    ``mode`` and ``workspace_strategy`` are checked by the planner, which lists the allowed values.
    """

    mode: Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(RUN_MODES)})] = "run"
    tickets: list[NonEmpty]
    repos: list[NonEmpty]
    doc_home_repo: Line = ""
    base_branch: Line = ""
    # empty: the policy's workspace.default_strategy
    workspace_strategy: Annotated[str, msgspec.Meta(extra_json_schema={"enum": ["", *WORKSPACE_STRATEGIES]})] = ""
    agents: list[Line] = []  # agent names from the policy; empty = all of them
    cwd: Line = ""  # directory repo names are resolved from; default: the daemon's
    dry_run: bool = False
    brief: BriefRequest | None = None


class RunActionRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Options of POST /api/v1/runs/{run_id}/{action}."""

    agent: Line = ""  # restart: only this agent
    keep_workspaces: bool = False  # cleanup
    merge: bool = False  # close: merge workspace branches into the base branch
    dry_run: bool = False


# -- snapshots ----------------------------------------------------------------------------------


class StepView(msgspec.Struct, kw_only=True, omit_defaults=True):
    ordinal: int
    ticket: str = ""
    name: str
    status: str
    attempts: int = 0
    error: str = ""
    started_at: str | None = None
    finished_at: str | None = None


class AgentView(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    workspace: str
    session: str = ""
    socket: str = ""
    workspace_path: str = ""
    status: str
    health: str = ""
    pane_pid: int | None = None
    last_activity_at: str | None = None
    last_activity_age_seconds: float | None = None
    restarts_used: int
    restarts_left: int | None = None
    last_error: str = ""
    completion_signalled: bool
    completion_summary: str = ""
    validation_status: str = ""
    validation_done_criteria: str = ""


class PendingGuidance(msgspec.Struct, kw_only=True, omit_defaults=True):
    agent_name: str
    question: str
    context: str = ""
    thread_id: str = ""
    answer_command: str


class ForumCounts(msgspec.Struct, kw_only=True):
    threads: int
    open_threads: int
    unanswered: int


class RunSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    mode: str
    status: str
    tickets: list[str]
    repos: list[str]
    created_at: str
    updated_at: str
    error: str = ""
    dry_run: bool = False
    # Always present (even empty), so scripts can rely on them.
    agents: list[AgentView]
    steps: list[StepView]
    pending_guidance: list[PendingGuidance]
    forum: ForumCounts | None = None
    brief: Brief | None = None
    workspace_root: str = ""


class RunResponse(msgspec.Struct, kw_only=True):
    run: RunSnapshot


class RunsResponse(msgspec.Struct, kw_only=True):
    runs: list[RunSnapshot]
