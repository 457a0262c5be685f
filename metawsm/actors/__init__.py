"""The actor runtime: supervised Pykka thread actors addressed by path.

Start here: :class:`ActorSystem` owns the tree, :class:`Supervisor` restarts children per
:class:`ChildSpec`, and every worker subclasses :class:`ManagedActor`.
"""

from metawsm.actors.errors import (
    ActorCrashed,
    ActorError,
    ActorTimeout,
    ActorUnavailable,
    InjectedFault,
    Refusal,
    SupervisorGaveUp,
)
from metawsm.actors.managed import DEFERRED, ActorContext, ManagedActor
from metawsm.actors.messages import FailureInfo, Ping, Request
from metawsm.actors.node import ActorNode
from metawsm.actors.supervisor import ChildSpec, RestartType, Strategy, Supervisor
from metawsm.actors.system import ActorSystem, DefaultSupervision

__all__ = [
    "DEFERRED",
    "ActorContext",
    "ActorCrashed",
    "ActorError",
    "ActorNode",
    "ActorSystem",
    "ActorTimeout",
    "ActorUnavailable",
    "ChildSpec",
    "DefaultSupervision",
    "FailureInfo",
    "InjectedFault",
    "ManagedActor",
    "Ping",
    "Refusal",
    "Request",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
]
