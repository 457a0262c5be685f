"""Topic names: ``<command_prefix>.<command>``, ``<event_prefix>.<event type without "forum.">``."""

from __future__ import annotations

import msgspec

from metawsm.forum.messages import COMMAND_NAMES, EVENT_TYPES

# Integration messages the handler writes for consumers outside this daemon (write_model.py).
INTEGRATION_NAMES = ("docs_sync_requested",)


class Topics(msgspec.Struct, frozen=True):
    command_prefix: str = "forum.commands"
    event_prefix: str = "forum.events"
    integration_prefix: str = "forum.integration"

    def command(self, name: str) -> str:
        return f"{self.command_prefix}.{name}"

    def event(self, event_type: str) -> str:
        return f"{self.event_prefix}.{event_type.removeprefix('forum.')}"

    def integration(self, name: str) -> str:
        return f"{self.integration_prefix}.{name}"

    def all_commands(self) -> list[str]:
        return [self.command(name) for name in COMMAND_NAMES]

    def all_events(self) -> list[str]:
        return [self.event(event_type) for event_type in EVENT_TYPES]

    def all_integrations(self) -> list[str]:
        return [self.integration(name) for name in INTEGRATION_NAMES]

    def is_command(self, topic: str) -> bool:
        return topic.startswith(self.command_prefix + ".")

    def is_event(self, topic: str) -> bool:
        return topic.startswith(self.event_prefix + ".")
