"""Opening the stream bus from the daemon's settings (shared by the relay and the consumer)."""

from __future__ import annotations

from typing import Any

from metawsm.transport.streams import StreamBus

READ_BLOCK_MS = 50
# The longest block a reader asks for (an idle stream); the read connection's socket timeout
# is the plain timeout plus this, so a block never looks like a dead server.
READ_BLOCK_MAX_MS = 2000


def open_bus(services: Any, role: str) -> StreamBus:
    redis = services.policy.forum.redis
    return StreamBus(
        services.redis_url,
        redis.stream,
        redis.group,
        redis.consumer,
        socket_timeout=2.0,
        max_block_ms=READ_BLOCK_MAX_MS,
    )


def consumed_topics(services: Any) -> list[str]:
    """Every stream the daemon consumes: all command topics and all event topics."""
    topics: list[str] = services.topics.all_commands() + services.topics.all_events()
    return topics
