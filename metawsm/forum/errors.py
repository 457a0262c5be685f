"""Refusals the forum gives back to callers (HTTP 4xx, CLI exit 2)."""

from __future__ import annotations

from metawsm.actors.errors import Refusal


class ForumError(Refusal):
    """A forum command or query was refused; ``status`` is the HTTP status to report."""

    code = "forum_error"
    status = 400

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message, code)
        if status is not None:
            self.status = status


class ThreadNotFound(ForumError):
    code = "forum_thread_not_found"
    status = 404

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"forum thread {thread_id} not found")
        self.thread_id = thread_id


class ThreadConflict(ForumError):
    code = "conflict"
    status = 409


# Which error code a refused command reports, by command name (api.md error table).
FAILURE_CODES: dict[str, str] = {
    "open_thread": "forum_open_failed",
    "add_post": "forum_add_post_failed",
    "answer": "forum_add_post_failed",
    "assign_thread": "forum_assign_failed",
    "change_state": "forum_state_failed",
    "set_priority": "forum_priority_failed",
    "close_thread": "forum_close_failed",
    "control_signal": "forum_control_signal_failed",
}


def for_command(error: ForumError, command: str) -> ForumError:
    """Re-code a generic validation refusal with the failing command's code."""
    if isinstance(error, (ThreadNotFound, ThreadConflict)):
        return error
    return ForumError(error.message, code=FAILURE_CODES.get(command, error.code), status=error.status)
