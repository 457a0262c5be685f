"""The CLI's exit codes (docs/cli.md), and the one table of error codes that break the 4xx rule.

The rule: an error the daemon answers with a 4xx is the caller's fault, so the CLI exits 2
(bad usage); anything else (5xx, unreachable, no answer in time) exits 1.  A few refusals are
4xx on the wire but runtime conditions for a script — a close gate that is not satisfied yet is
not bad usage — and :data:`EXCEPTIONS` names them by error code, the only thing the server's
error body carries besides the message.

Both sides read this module: the CLI's :class:`~metawsm.cli.client.ApiFailure` for the code in
the body it got, and the server's :class:`~metawsm.actors.errors.Refusal` to say which exit code
each refusal will cause.  It imports nothing: every CLI command loads it at start-up.
"""

from __future__ import annotations

OK = 0
FAILURE = 1  # a runtime failure: daemon unreachable, server error (5xx), a timeout, a gate
USAGE = 2  # bad usage or input refused by the server (4xx)

# error code → exit code, for the refusals that are not bad usage although their status is 4xx
EXCEPTIONS: dict[str, int] = {
    "close_blocked": FAILURE,  # HTTP 409: a close gate refused (the run is not ready to close)
    "commit_checks_failed": FAILURE,  # HTTP 409: a commit check failed (the work is not ready to commit)
    "merge_refused": FAILURE,  # HTTP 409: a merge cannot be made as things stand (conflicts, local changes)
    "pr_refused": FAILURE,  # HTTP 409: pr cannot push or open a pull request as things stand
}


def for_status(status: int) -> int:
    """The exit code of an HTTP error status: 4xx → 2, anything else → 1."""
    return USAGE if 400 <= status < 500 else FAILURE


def for_error(status: int, code: str) -> int:
    """The exit code of an API error: :data:`EXCEPTIONS` first, then :func:`for_status`."""
    return EXCEPTIONS.get(code, for_status(status))
