"""Delivery tables: ``run_iterations`` (migration 6), one row per ``metawsm iterate`` of a run, and
``run_pull_requests`` (migration 7), what ``metawsm pr`` pushed and opened; migration 8 adds
``doc_sync_states.error`` (the ``seed_docs`` step records one row per run, ticket and workspace);
``run_review_feedback`` (migration 9), what ``metawsm review sync`` fetched.

Owned by the run actors (``Run[<run_id>]`` writes it).  ``forum_sequence`` is the newest
``forum_events.sequence`` when the feedback was given: a completion or validation signal of
the run's agents (all of them, or ``agent_name`` alone) counts for the close gates only when
it came after it.  Times are TEXT RFC 3339 UTC.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing sqlite-utils is slow; only migrations that run need it
    import sqlite_utils

TABLES = ("run_iterations", "run_pull_requests", "run_review_feedback")


def apply(db: sqlite_utils.Database) -> None:
    """Migration 6: create the delivery tables. Runs inside the migration's transaction."""
    db.create_table(
        "run_iterations",
        {
            "run_id": str,
            "iteration": int,  # 1, 2, ... per run
            "agent_name": str,  # "" when the feedback is for every agent
            "feedback": str,
            "forum_sequence": int,
            "created_at": str,
        },
        pk=("run_id", "iteration"),
        not_null={"run_id", "iteration", "agent_name", "feedback", "forum_sequence", "created_at"},
        defaults={"agent_name": "", "forum_sequence": 0},
        foreign_keys=[("run_id", "runs", "run_id")],
    )


def apply_pull_requests(db: sqlite_utils.Database) -> None:
    """Migration 7: ``run_pull_requests``, one row per (run, ticket, repo) that ``metawsm pr``
    pushed: the branch, the forge it went through and, for a pull request, its URL, number and
    state (``pushed`` when the forge only got the branch)."""
    db.create_table(
        "run_pull_requests",
        {
            "run_id": str,
            "ticket": str,
            "repo": str,
            "workspace": str,
            "provider": str,  # github | push
            "branch": str,
            "base_branch": str,
            "head_commit": str,
            "url": str,  # the pull request, or the compare URL of a known forge ("" when none)
            "number": int,  # 0 without a pull request
            "state": str,  # pushed | open | draft | closed | merged
            "created_at": str,
            "updated_at": str,
        },
        pk=("run_id", "ticket", "repo"),
        not_null={"run_id", "ticket", "repo", "workspace", "provider", "branch", "base_branch", "state",
                  "created_at", "updated_at"},
        defaults={"head_commit": "", "url": "", "number": 0},
        foreign_keys=[("run_id", "runs", "run_id")],
    )


def apply_doc_sync_errors(db: sqlite_utils.Database) -> None:
    """Migration 8: ``doc_sync_states.error``, why a ``seed_docs`` step failed ("" otherwise)."""
    db.execute("ALTER TABLE doc_sync_states ADD COLUMN error TEXT NOT NULL DEFAULT ''")


def apply_review_feedback(db: sqlite_utils.Database) -> None:
    """Migration 9: ``run_review_feedback``, each review and review comment ``metawsm review sync``
    fetched from a run's pull requests, stored once (``queued``, then ``dispatched`` once sent to
    the agents), with the forum thread it was posted in (one per pull request)."""
    db.create_table(
        "run_review_feedback",
        {
            "run_id": str,
            "ticket": str,
            "repo": str,
            "pr_number": int,
            "source_type": str,  # review | comment
            "source_id": str,
            "author": str,
            "state": str,  # a review's state (approved, changes_requested, commented); "" for a comment
            "body": str,
            "path": str,  # a comment's file and line ("" for a review)
            "line": int,
            "url": str,
            "status": str,  # queued | dispatched
            "thread_id": str,
            "created_at": str,
        },
        pk=("run_id", "repo", "pr_number", "source_type", "source_id"),
        not_null={"run_id", "ticket", "repo", "pr_number", "source_type", "source_id", "status", "created_at"},
        defaults={"author": "", "state": "", "body": "", "path": "", "line": 0, "url": "", "thread_id": ""},
        foreign_keys=[("run_id", "runs", "run_id")],
    )
