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


# Delivery steps: added by the commands that deliver a run's work (one row per ticket and kind,
# updated by each attempt); never executed by the run's own step loop.
STEP_COMMIT = "commit"
STEP_MERGE = "merge"
STEP_ITERATE = "iterate"
STEP_PR = "pr"
STEP_REVIEW = "review_sync"
DELIVERY_STEPS = frozenset({STEP_COMMIT, STEP_MERGE, STEP_ITERATE, STEP_PR, STEP_REVIEW})


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
    message: Line = ""  # commit: the commit message (default: "<ticket>: <goal>")
    push: bool = False  # merge: push the base branches to origin afterwards
    changelog_entry: Line = ""  # close: append this to the ticket's changelog (committed) first
    feedback: Text = ""  # iterate: the feedback for the agents (required there)
    title: Line = ""  # pr: the pull request's title (default: "[<ticket>] <goal>")
    body: Text = ""  # pr: its description (default: brief, Q/A, validation, diff stat)
    draft: bool = False  # pr: open it as a draft
    dispatch: bool = False  # review-sync: also send the queued feedback to the agents (as iterate)


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


class PullRequestRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A row of ``run_pull_requests`` (see docs/runs.md, From run to merged change)."""

    ticket: str
    repo: str
    workspace: str = ""
    provider: str = ""  # github | push
    branch: str = ""
    base_branch: str = ""
    head_commit: str = ""
    url: str = ""  # the pull request, or a known forge's compare page ("" when none)
    number: int = 0
    state: str = ""  # pushed | open | draft | closed | merged
    updated_at: str = ""


class DocSyncRow(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A row of ``doc_sync_states``: the ``seed_docs`` step of one ticket and workspace."""

    ticket: str
    workspace: str
    status: str  # pending | synced | failed
    revision: str = ""  # the doc-home checkout's commit once synced
    error: str = ""
    updated_at: str = ""


class DocsView(msgspec.Struct, kw_only=True, omit_defaults=True):
    provider: str
    home_repo: str
    seed_mode: str
    sync: list[DocSyncRow] = []


class RepoDiff(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One repository of one workspace: what is not committed yet, and how far the branch is
    ahead of the base branch."""

    workspace: str
    repo: str
    branch: str = ""
    base_branch: str = ""
    changed: int = 0  # uncommitted paths (untracked included)
    changed_files: list[str] = []  # the first 20 of them
    ahead: int = 0
    error: str = ""  # e.g. the checkout is gone


class ReviewCounts(msgspec.Struct, kw_only=True):
    queued: int = 0  # fetched, not sent to the agents yet
    dispatched: int = 0


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
    # What `metawsm pr` pushed and opened, per ticket and repo (left out when nothing yet).
    pull_requests: list[PullRequestRow] = []
    docs: DocsView | None = None  # the ticket docs and their seed_docs state
    diffs: list[RepoDiff] = []  # GET /api/v1/runs/{id} only (it runs git): per workspace and repo
    next: str = ""  # the one command that moves the run on, when there is one
    review: ReviewCounts | None = None  # review feedback fetched by `metawsm review sync`, once there is some


class RunResponse(msgspec.Struct, kw_only=True):
    run: RunSnapshot


class RunsResponse(msgspec.Struct, kw_only=True):
    runs: list[RunSnapshot]
