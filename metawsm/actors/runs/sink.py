"""Forwards control-signal news from the EventBroker to the RunSupervisor (a tell of
:class:`ControlChanged` per run; called on the broker's thread, so it never waits)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metawsm.actors.runs.messages import RUNS, ControlChanged

if TYPE_CHECKING:
    from metawsm.actors.system import ActorSystem


class RunsSink:
    def __init__(self, system: ActorSystem) -> None:
        self.system = system

    def events_applied(self, projection: str, events: list[Any]) -> None:
        if projection != "control_state":
            return
        run_ids = {e.envelope.run_id for e in events
                   if e.envelope.event_type == "forum.control.signal" and e.envelope.run_id}
        for run_id in run_ids:
            self.system.tell(RUNS, ControlChanged(run_id))

    def commands_decided(self, outcomes: list[Any]) -> None:
        pass
