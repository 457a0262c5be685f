"""OperatorSink: forwards projected control signals to the operator (called on the broker's
thread, so it never waits)."""

from __future__ import annotations

from typing import Any

from metawsm.actors.operator.messages import ControlNews, tell_operator


class OperatorSink:
    def __init__(self, system: Any) -> None:
        self.system = system

    def events_applied(self, projection: str, events: list[Any]) -> None:
        if projection != "control_state":
            return
        run_ids = sorted({e.envelope.run_id for e in events
                          if e.envelope.event_type == "forum.control.signal" and e.envelope.run_id})
        if run_ids:
            tell_operator(self.system, ControlNews(run_ids))

    def commands_decided(self, outcomes: list[Any]) -> None:
        pass
