"""Errors raised to callers of actors.

The split matters: a :class:`Refusal` is the caller's fault (bad input, a refused
transition) and travels back to the caller while the actor keeps running; anything else
raised inside an actor is a bug or an outage, so the actor crashes and its supervisor
decides what happens next ("let it crash").
"""

from __future__ import annotations

from metawsm.cli import exit_codes


class ActorError(Exception):
    """Base class for failures of the actor runtime itself."""


class ActorUnavailable(ActorError):
    """The addressed actor is not running right now (dead, restarting, or never started)."""

    def __init__(self, path: str, state: str = "not running") -> None:
        super().__init__(f"actor {path} is {state}; try again shortly")
        self.path = path
        self.state = state


class ActorTimeout(ActorError):
    """The actor did not answer within the caller's time budget."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__(f"actor {path} did not answer within {timeout:g}s")
        self.path = path
        self.timeout = timeout


class ActorCrashed(ActorError):
    """The actor crashed while handling this very request; its supervisor restarts it."""

    def __init__(self, path: str, cause: str) -> None:
        super().__init__(f"actor {path} crashed while handling the request: {cause}")
        self.path = path
        self.cause = cause


class SupervisorGaveUp(ActorError):
    """Restart intensity was exceeded; the supervisor stopped its children and fails upward."""


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault-injection hook to exercise supervision."""


class Refusal(Exception):
    """An expected, caller-caused error: returned to the caller, never crashes the actor.

    ``code`` is the snake_case error code the HTTP layer reports and ``status`` its HTTP status
    (400 unless the class or the raise says otherwise); both are in docs/api.md's Errors table.
    A subclass states its ``code`` and ``status`` as class attributes, and one raise may override
    either (``RunError(message, code="invalid_run")``): subclasses need no constructor of
    their own.

    ``exit_code`` is what the CLI exits with when this refusal reaches it (docs/cli.md): 2 for
    a 4xx (bad usage), 1 otherwise, except the codes listed in :mod:`metawsm.cli.exit_codes`
    (``close_blocked``).  That table is the one the CLI reads too: it only sees the code.
    """

    code: str = "refused"
    status: int = 400

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def exit_code(self) -> int:
        return exit_codes.for_error(self.status, self.code)


class IdempotencyKeyReused(Refusal):
    """An ``Idempotency-Key`` sent again with another request (method, path, body) than the
    one it was first used for (metawsm/idempotency_keys.py)."""

    code = "idempotency_key_reused"
    status = 409


class StorageUnavailable(Refusal):
    """The database cannot be written now (a full disk, an I/O error; metawsm/store/faults.py).

    A refusal, not a crash: nothing was written, the actor keeps running, and the caller may
    retry once the disk is fixed; writes resume by themselves then.
    """

    code = "storage_unavailable"
    status = 503
