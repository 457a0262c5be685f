"""The actor runtime: supervised Pykka thread actors addressed by path.

Start here: :class:`ActorSystem` owns the tree, :class:`Supervisor` restarts children per
:class:`ChildSpec`, and every worker subclasses :class:`ManagedActor`.

Names are loaded on first use: importing ``metawsm.actors.errors`` (as the CLI does, through
the forum rules) must not pull in Pykka and the whole runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActorCrashed": "errors",
    "ActorError": "errors",
    "ActorTimeout": "errors",
    "ActorUnavailable": "errors",
    "InjectedFault": "errors",
    "Refusal": "errors",
    "SupervisorGaveUp": "errors",
    "DEFERRED": "managed",
    "ActorContext": "managed",
    "ManagedActor": "managed",
    "FailureInfo": "messages",
    "Ping": "messages",
    "Request": "messages",
    "ActorNode": "node",
    "ChildSpec": "supervisor",
    "RestartType": "supervisor",
    "Strategy": "supervisor",
    "Supervisor": "supervisor",
    "ActorSystem": "system",
    "DefaultSupervision": "system",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'metawsm.actors' has no attribute {name!r}")
    return getattr(importlib.import_module(f"metawsm.actors.{module}"), name)
