"""The verdict of ``GET /api/v1/health`` while the system runs: ``ok``, ``recovering`` or
``degraded``, each not-``ok`` status with its reason.  (``failed``, the system given up, is
decided before this by the route, from ``ActorSystem.failed``.)

* ``recovering`` while a supervisor is restarting a child: the child waits out its backoff
  (``restarting``) or is starting again (``starting`` with restarts behind it).  It names
  every such actor with its last failure, read from the inspection tree (no mailbox is
  asked, so it answers even while the restarting actors cannot).  It comes before
  ``degraded``: the system is already repairing itself, and the reason names both.
* ``degraded`` when nothing restarts but something outside is wrong: the database cannot be
  written (``disk full: <path>``, from :class:`~metawsm.store.faults.StorageStatus`; writes get
  503 until it clears), Redis unreachable.
* ``ok`` otherwise.  An actor starting for the first time (a new run) is not recovering.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from metawsm.actors.node import ActorNode
from metawsm.api.schemas import HealthStatus, RecoveringActor


class HealthVerdict(msgspec.Struct, frozen=True):
    status: HealthStatus
    reason: str = ""
    recovering: list[RecoveringActor] = msgspec.field(default_factory=list)


def recovering_actors(root: ActorNode) -> list[RecoveringActor]:
    """Every actor being restarted, in tree order."""
    found: list[RecoveringActor] = []
    for node in root.walk():
        if node.state == "restarting" or (node.state == "starting" and node.restarts > 0):
            failure = node.last_failure
            reason = f"{failure.type}: {failure.message}" if failure is not None else "restart requested"
            state: Literal["restarting", "starting"] = "restarting" if node.state == "restarting" else "starting"
            found.append(RecoveringActor(path=node.path, state=state, restarts=node.restarts, reason=reason))
    return found


def assess(root: ActorNode, bus_healthy: bool, bus_error: str, storage_fault: str = "") -> HealthVerdict:
    """The status of a running system from its actor tree, its database and the forum bus.

    ``storage_fault``: the reason the database cannot be written (``disk full: <path>``), or "".
    """
    recovering = recovering_actors(root)
    reasons = [f"{actor.path} is {actor.state} after {actor.reason}" for actor in recovering]
    if storage_fault:
        reasons.append(storage_fault)
    if not bus_healthy:
        reasons.append(bus_error or "the forum bus is not connected to Redis")
    if recovering:
        return HealthVerdict("recovering", "; ".join(reasons), recovering)
    if reasons:
        return HealthVerdict("degraded", "; ".join(reasons))
    return HealthVerdict("ok")
