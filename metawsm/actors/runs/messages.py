"""Messages of the run actors (frozen msgspec Structs) and their paths."""

from __future__ import annotations

from typing import Any

import msgspec

from metawsm.runs.model import RunActionRequest, RunRequest

RUNS = "root/runs"


def run_path(run_id: str) -> str:
    return f"{RUNS}/{run_id}"


class CreateRun(msgspec.Struct, frozen=True):
    """Plan a run; unless it is a dry run, store it and start its Run actor.

    Answered with the run id once its agents are started (or it failed), or with the plan
    snapshot for a dry run.
    """

    request: RunRequest


class RunCommand(msgspec.Struct, frozen=True):
    run_id: str
    action: str  # stop | resume | restart | close | cleanup
    options: RunActionRequest = msgspec.field(default_factory=RunActionRequest)


class ControlChanged(msgspec.Struct, frozen=True):
    """The control_state projection committed signals for this run."""

    run_id: str


class AgentFailed(msgspec.Struct, frozen=True):
    agent: str
    workspace: str
    reason: str


class AgentExited(msgspec.Struct, frozen=True):
    """An agent stopped by itself after signalling completion."""

    agent: str
    workspace: str


class KillSession(msgspec.Struct, frozen=True):
    """Stop watching and kill the agent's tmux session (run stop/close/cleanup)."""


class StartSession(msgspec.Struct, frozen=True):
    """Start the agent's session afresh (run resume/restart); resets the restart budget."""


class Execute(msgspec.Struct, frozen=True):
    reply: Any = None


ACTIONS = ("stop", "resume", "restart", "close", "cleanup")
