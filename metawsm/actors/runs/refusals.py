"""What git, tmux or the filesystem refused, turned into a run refusal.

A run command that fails because a tool said no (a worktree that cannot be added, a tmux
server that will not start a session, a directory that cannot be written) is answered with
the tool's reason and leaves the actor running: retrying the command cannot fix a crash loop,
and a run actor that crashed on every retry would, past the restart intensity, take its
supervisor and every other run with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from metawsm.runs.model import RunError
from metawsm.runs.providers.docs import DocsError
from metawsm.runs.providers.workspace import WorkspaceError
from metawsm.runs.tmux import TmuxError

PROVIDER_ERRORS = (WorkspaceError, DocsError, TmuxError, OSError)


@contextmanager
def provider_errors_refused(prefix: str = "") -> Iterator[None]:
    """Re-raise a provider's error as :class:`RunError` (``run_failed``), ``prefix`` first."""
    try:
        yield
    except PROVIDER_ERRORS as error:
        raise RunError(prefix + (str(error) or type(error).__name__)) from None
