"""PaneBoard: one ``tmux list-panes -a`` answers the health polls of every agent on a tmux server.

Each ``TmuxAgent`` polls its own session on its own timer; asking tmux once per agent and poll
costs a process start each time, so supervising many agents meant hundreds of ``tmux`` clients
a second.  The board keeps the last listing of a server for ``max_age`` seconds and answers
from it; a session missing from the listing (just started, or gone) is asked about directly,
so a fresh session is never taken for a dead one.
"""

from __future__ import annotations

import threading
import time

from metawsm.runs.tmux import PaneInfo, Tmux


class PaneBoard:
    def __init__(self, tmux: Tmux, max_age: float) -> None:
        self.tmux = tmux
        self.max_age = max_age
        self._lock = threading.Lock()
        self._panes: dict[str, PaneInfo] = {}
        self._taken_at = float("-inf")
        self.listings = 0  # how many list-panes calls were made (inspection and tests)

    def pane_info(self, session: str) -> PaneInfo:
        """What tmux says about ``session``'s pane, at most ``max_age`` seconds old."""
        with self._lock:
            if time.monotonic() - self._taken_at > self.max_age:
                self._panes = self.tmux.panes()
                self._taken_at = time.monotonic()
                self.listings += 1
            info = self._panes.get(session)
        return info if info is not None else self.tmux.pane_info(session)

    def invalidate(self) -> None:
        """A session was started, restarted or killed: the next poll lists the server again."""
        with self._lock:
            self._taken_at = float("-inf")


class PaneBoards:
    """The daemon's boards, one per tmux socket (agent actors on many threads share them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._boards: dict[str, PaneBoard] = {}

    def board(self, socket: str, max_age: float) -> PaneBoard:
        with self._lock:
            board = self._boards.get(socket)
            if board is None:
                board = self._boards[socket] = PaneBoard(Tmux(socket), max_age)
            else:
                board.max_age = min(board.max_age, max_age)  # the fastest poller sets the pace
            return board
