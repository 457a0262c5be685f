"""Which tmux server (``tmux -L <name>``) a daemon's agents live on.

Every daemon gets a server of its own, so two daemons on one machine (two checkouts, a test
daemon next to a real one) never see, kill or re-attach to each other's sessions. The name is
derived from the daemon's database, the same thing that identifies it in its Redis namespace
claim: the same database always gives the same name, so a restarted daemon finds the sessions
its previous incarnation started.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["AUTO", "PREFIX", "tmux_socket_for"]

AUTO = "auto"
PREFIX = "metawsm-"
_DIGEST_CHARS = 8


def tmux_socket_for(configured: str, db_path: str | Path) -> str:
    """The ``tmux -L`` name for policy value ``configured`` of the daemon using ``db_path``.

    ``"auto"`` becomes ``metawsm-<first 8 hex digits of the SHA-1 of the database's absolute
    path>``; any other value is a name the user chose and is used as it is.

    The path is resolved (symlinks followed, as the namespace claim does), so starting the
    daemon from another directory, or through a symlink, still finds the same server.
    """
    if configured.strip() != AUTO:
        return configured
    absolute = str(Path(db_path).resolve())
    digest = hashlib.sha1(absolute.encode("utf-8"), usedforsecurity=False).hexdigest()
    return PREFIX + digest[:_DIGEST_CHARS]
