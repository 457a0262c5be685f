"""Forwards control-signal news from the EventBroker to the RunSupervisor."""

from __future__ import annotations

from typing import Any

from metawsm.actors.runs.messages import RUNS, ControlChanged


class RunsSink:
    def __init__(self, system: Any) -> None:
        self.system = system

    def events_applied(self, projection: str, events: list[Any]) -> None:
        if projection != "control_state":
            return
        run_ids = {e.envelope.run_id for e in events if e.envelope.event_type == "forum.control.signal" and e.envelope.run_id}
        for run_id in run_ids:
            self.system.tell(RUNS, ControlChanged(run_id))

    def commands_decided(self, outcomes: list[Any]) -> None:
        pass
