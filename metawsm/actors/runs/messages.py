"""Messages of the run actors (frozen msgspec Structs) and their paths.

Requests to the RunSupervisor (``root/runs``): :class:`CreateRun` and the run commands
(:data:`RunCommand`).  Every run command but :class:`CleanupRun` is forwarded to the run's
own ``Run`` actor, which answers the run id once the command is done.
"""

from __future__ import annotations

from typing import Any

import msgspec

from metawsm.idempotency_keys import KeyClaim
from metawsm.runs.model import RunRequest

RUNS = "root/runs"


def run_path(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


class CreateRun(msgspec.Struct, frozen=True):
    """Plan a run; unless it is a dry run, store it and start its Run actor.

    Answered with the run id once its agents are started (or it failed), or with the plan
    snapshot for a dry run.  ``idempotency``: the request's key, recorded in the transaction
    that stores the run; a key already recorded answers with its run and starts nothing.
    """

    request: RunRequest
    idempotency: KeyClaim | None = None


class StopRun(msgspec.Struct, frozen=True):
    """Kill every agent's session, then mark the run ``stopped``.  Answers the run id."""

    run_id: str


class ResumeRun(msgspec.Struct, frozen=True):
    """Carry on a stopped, paused or failed run: unfinished steps, or fresh agent sessions.
    Answers the run id."""

    run_id: str


class RestartAgent(msgspec.Struct, frozen=True):
    """Start fresh sessions (with full restart budgets) for one agent, or every agent when
    ``agent`` is empty.  Answers the run id."""

    run_id: str
    agent: str = ""


class CloseRun(msgspec.Struct, frozen=True):
    """Check the close gates, optionally merge the workspaces, kill the sessions, then mark the
    run ``closed`` and stop its actor.  Answers the run id (also for a run already closed)."""

    run_id: str
    merge: bool = False  # merge each workspace's branches into the base branch first
    dry_run: bool = False  # check the gates (and the merge) only; change nothing
    changelog_entry: str = ""  # appended to the ticket's changelog in the doc-home repo, committed first


class CommitRun(msgspec.Struct, frozen=True):
    """Run the commit checks on every repository of the run with changes, then commit them on
    the run's branch (on top of the agent's own commits).  Answers the CommitReport; a failed
    check refuses (``commit_checks_failed``) and commits nothing."""

    run_id: str
    message: str = ""  # default: "<ticket>: <first line of the brief's goal>"
    dry_run: bool = False  # check what can be checked without running anything; commit nothing


class MergeRun(msgspec.Struct, frozen=True):
    """Merge each workspace branch into its base branch (fast-forward, else a merge commit),
    refused as a whole, one line per problem, when one cannot be made; with ``push``, push the
    base branches to ``origin``.  Answers the MergeReport."""

    run_id: str
    push: bool = False
    dry_run: bool = False  # plan only: what each merge would be, and what refuses it


class OpenPullRequests(msgspec.Struct, frozen=True):
    """Push the run's branches to ``origin`` and, with the ``github`` forge provider, open a pull
    request per repository (``git_pr.provider``: auto, github, push).  Answers the PrReport."""

    run_id: str
    title: str = ""  # default: "[<ticket>] <first line of the goal>"
    body: str = ""  # default: the brief, Q/A, validation and diff stat
    draft: bool = False
    dry_run: bool = False


class SyncReviews(msgspec.Struct, frozen=True):
    """Fetch the reviews and review comments of the run's pull requests (github provider), store
    the new ones once each, post them in the run's forum (a thread per pull request); with
    ``dispatch``, send the queued ones to the agents as an iteration.  Answers the ReviewSyncReport."""

    run_id: str
    dispatch: bool = False


class IterateRun(msgspec.Struct, frozen=True):
    """Give the run's agents (or ``agent`` alone) more work: the feedback is recorded, written to
    ``<workspace>/.metawsm/feedback.md``, posted in the run's forum and announced in each agent's
    pane; the run goes back to ``running`` (a stopped run gets its sessions again).  Completion
    and validation signals from before it no longer count.  Answers the IterateReport."""

    run_id: str
    feedback: str
    agent: str = ""
    dry_run: bool = False


class CleanupRun(msgspec.Struct, frozen=True):
    """Remove what a finished run left: sessions, workspaces (unless ``keep_workspaces``).
    Answered by the RunSupervisor with the cleanup summary (a dict)."""

    run_id: str
    keep_workspaces: bool = False
    dry_run: bool = False  # only report what would be removed


# The commands one can give a run (POST /api/v1/runs/{run_id}/{action}); all are requests.
RunCommand = (
    StopRun | ResumeRun | RestartAgent | CloseRun | CommitRun | MergeRun | IterateRun | OpenPullRequests
    | SyncReviews | CleanupRun
)


class ControlChanged(msgspec.Struct, frozen=True):
    """The control_state projection committed signals for this run."""

    run_id: str


class AgentFailed(msgspec.Struct, frozen=True):
    """A TmuxAgent spent its restart budget and stopped watching (told to its Run)."""

    agent: str
    workspace: str
    reason: str


class AgentExited(msgspec.Struct, frozen=True):
    """An agent stopped by itself after signalling completion."""

    agent: str
    workspace: str


class KillSession(msgspec.Struct, frozen=True):
    """Stop watching and kill the agent's tmux session (run stop/close).  Answers whether a
    session was killed."""


class StartSession(msgspec.Struct, frozen=True):
    """Start the agent's session afresh (run resume/restart); resets the restart budget.
    Answers the session name."""


class Execute(msgspec.Struct, frozen=True):
    """The Run actor's own "execute the steps not done yet"; ``reply`` (a reply handle, or
    None) gets the run id once they ran (or one failed)."""

    reply: Any = None
