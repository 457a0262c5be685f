"""The write-wait protocol that ``ForumService.submit`` and ``submit_sync`` share, without I/O.

Each case gives the intake's answer and the verdict the caller got (None: none within the
budget) and checks what the caller is told and what it still has to read.  The protocol
through the real pipeline is in ``tests/test_pipeline_commands.py``.
"""

from __future__ import annotations

import pytest

from metawsm.actors.forum.messages import Accepted
from metawsm.forum.errors import ForumError
from metawsm.forum.service import MIN_INTAKE_TIMEOUT, Verdict, WriteResult, intake_timeout, wait_outcome
from metawsm.forum.views import ThreadView

ACCEPTED = Accepted(thread_id="fthr_1", event_id="fevt_2", event_ids=["fevt_1", "fevt_2"])
VIEW = ThreadView(
    thread_id="fthr_1", ticket="T-1", title="t", state="answered", priority="normal", opened_by_type="agent",
    posts_count=2, last_event_sequence=7, opened_at="2026-01-01T00:00:00Z", updated_at="2026-01-01T00:00:01Z",
)


def test_the_intake_gets_at_least_the_minimum_however_short_the_wait() -> None:
    assert intake_timeout(0.1) == MIN_INTAKE_TIMEOUT
    assert intake_timeout(30.0) == 30.0


def test_an_applied_verdict_with_the_view_handed_over_needs_no_read() -> None:
    outcome = wait_outcome(ACCEPTED, Verdict(status="applied", thread_id="fthr_1", sequence=7, thread=VIEW))
    assert outcome.read == ""
    assert outcome.result == WriteResult(status="applied", thread_id="fthr_1", event_id="fevt_2", thread=VIEW)


@pytest.mark.parametrize("status", ["applied", "unchanged"])
def test_a_verdict_without_a_view_asks_for_the_thread_to_be_read(status: str) -> None:
    outcome = wait_outcome(ACCEPTED, Verdict(status=status, thread_id="fthr_1", sequence=7))  # type: ignore[arg-type]  # parametrised over the status literals
    assert outcome.read == "fthr_1"
    assert outcome.complete(VIEW) == WriteResult(status="applied", thread_id="fthr_1", event_id="fevt_2", thread=VIEW)


def test_the_verdicts_thread_wins_and_an_empty_one_falls_back_to_the_intakes() -> None:
    assert wait_outcome(ACCEPTED, Verdict(status="unchanged", thread_id="fthr_9")).read == "fthr_9"
    assert wait_outcome(ACCEPTED, Verdict(status="unchanged", thread_id="")).read == "fthr_1"


def test_no_verdict_within_the_budget_means_accepted_and_nothing_to_read() -> None:
    outcome = wait_outcome(ACCEPTED, None)
    assert outcome == (WriteResult(status="accepted", thread_id="fthr_1", event_id="fevt_2"), "")


def test_an_already_applied_write_is_applied_and_reads_its_thread() -> None:
    retry = Accepted(thread_id="fthr_1", event_id="fevt_1", event_ids=["fevt_1"], already_applied=True)
    outcome = wait_outcome(retry, None)
    assert outcome.read == "fthr_1"
    assert outcome.complete(VIEW) == WriteResult(status="applied", thread_id="fthr_1", event_id="fevt_1", thread=VIEW)


def test_a_rejection_is_raised_with_its_code_and_status() -> None:
    verdict = Verdict(status="rejected", thread_id="fthr_1", error_code="thread_closed",
                      error_message="forum thread fthr_1 is closed", error_status=409)
    with pytest.raises(ForumError) as refused:
        wait_outcome(ACCEPTED, verdict)
    assert (refused.value.code, refused.value.status, refused.value.message) == (
        "thread_closed", 409, "forum thread fthr_1 is closed")
