"""Refusals the forum gives back to callers (HTTP 4xx, CLI exit 2), and their status table.

A refused command's verdict is stored in ``forum_command_results`` as its code and message;
:func:`status_of` gives the HTTP status back for a code, from the same classes that set it when
the refusal was raised, so a verdict read back from SQLite reports what the raise did.
"""

from __future__ import annotations

from metawsm.actors.errors import Refusal


class ForumError(Refusal):
    """A forum command or query was refused (400 unless the class or the raise says otherwise)."""

    code = "forum_error"


class ThreadNotFound(ForumError):
    code = "forum_thread_not_found"
    status = 404

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"forum thread {thread_id} not found")
        self.thread_id = thread_id


class ThreadConflict(ForumError):
    code = "conflict"
    status = 409


# The classes whose code a refused command keeps (for_command re-codes every other refusal with
# the command's failure code, and those are plain ForumErrors: 400).
KEPT_BY_COMMANDS: tuple[type[ForumError], ...] = (ThreadNotFound, ThreadConflict)
STATUS_OF_CODE: dict[str, int] = {cls.code: cls.status for cls in KEPT_BY_COMMANDS}


def status_of(code: str) -> int:
    """The HTTP status of a forum error code (a verdict's ``error_code``)."""
    return STATUS_OF_CODE.get(code, ForumError.status)


def for_command(error: ForumError, command: str) -> ForumError:
    """Re-code a generic validation refusal with the failing write's code (by write name:
    ``open_thread``, ``answer``, ...; the codes are in :mod:`metawsm.forum.registry`)."""
    if isinstance(error, KEPT_BY_COMMANDS):
        return error
    from metawsm.forum.registry import failure_code  # the registry imports this module

    return ForumError(error.message, code=failure_code(command, error.code), status=error.status)
