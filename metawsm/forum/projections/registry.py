"""The projections the daemon runs, by name (the names are checkpoints' and the CLI's keys)."""

from __future__ import annotations

from metawsm.forum.errors import ForumError
from metawsm.forum.projections import Projection
from metawsm.forum.projections.control_state import ControlStateProjection
from metawsm.forum.projections.queue_view import QueueViewProjection
from metawsm.forum.projections.thread_stats import ThreadStatsProjection
from metawsm.forum.projections.thread_views import ThreadViewsProjection

PROJECTION_NAMES: tuple[str, ...] = ("thread_views", "thread_stats", "queue_view", "control_state")

PROJECTION_CLASSES: dict[str, type[Projection]] = {
    cls.name: cls
    for cls in (ThreadViewsProjection, ThreadStatsProjection, QueueViewProjection, ControlStateProjection)
}
assert tuple(PROJECTION_CLASSES) == PROJECTION_NAMES


def create_projection(name: str) -> Projection:
    """A new projection object; ``invalid_projection`` for an unknown name."""
    try:
        cls = PROJECTION_CLASSES[name]
    except (KeyError, TypeError):
        raise ForumError(
            f'unknown projection "{name}": must be one of {", ".join(PROJECTION_NAMES)}',
            code="invalid_projection",
        ) from None
    return cls()


def all_projections() -> list[Projection]:
    """One new object per projection, in :data:`PROJECTION_NAMES` order."""
    return [create_projection(name) for name in PROJECTION_NAMES]
