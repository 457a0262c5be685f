"""An operator decision, as stored in ``operator_decisions`` and sent to clients (docs/operator.md)."""

from __future__ import annotations

from typing import Final

import msgspec

GUIDANCE_NEEDED: Final = "guidance_needed"
ESCALATE_GUIDANCE: Final = "escalate_guidance"
ESCALATE_BLOCKED: Final = "escalate_blocked"
AUTO_RESTART: Final = "auto_restart"
AUTO_STOP_STALE: Final = "auto_stop_stale"
COMMIT_READY: Final = "commit_ready"
PR_READY: Final = "pr_ready"
REVIEW_FEEDBACK_READY: Final = "review_feedback_ready"
NOOP: Final = "noop"

INTENTS: Final = (GUIDANCE_NEEDED, ESCALATE_GUIDANCE, ESCALATE_BLOCKED, AUTO_RESTART, AUTO_STOP_STALE, COMMIT_READY,
                  PR_READY, REVIEW_FEEDBACK_READY)
# Intents that only ask a human to look: the LLM in ``auto`` mode may raise one of these, never more.
ESCALATIONS: Final = (ESCALATE_GUIDANCE, ESCALATE_BLOCKED)


class Suggestion(msgspec.Struct, frozen=True, kw_only=True):
    """What the optional LLM answered about a run (``operator.llm.command``)."""

    intent: str
    reason: str = ""
    confidence: float = 0.0
    needs_human: bool = False


class Decision(msgspec.Struct, kw_only=True):
    """One decision of the operator; ``cause`` names what it answered, so it is taken once."""

    id: int = 0
    run_id: str
    intent: str
    reason: str
    cause: str
    source: str = "rule"  # rule | llm
    executed: bool = False  # true once its action was carried out (or handed to the forum)
    at: str = ""
    thread_id: str = ""
    ticket: str = ""
    agent_name: str = ""
    workspace: str = ""
    run_status: str = ""  # the run's status when the decision was taken
    tickets: list[str] = []
    llm: Suggestion | None = None  # the LLM's suggestion, recorded beside the rule's decision
