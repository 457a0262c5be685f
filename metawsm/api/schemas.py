"""Query parameter and response shapes of the API (msgspec Structs, also fed to OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from metawsm.actors.node import ActorNode
from metawsm.forum.requests import PriorityText, StateText, ViewerTypeText
from metawsm.forum.views import (
    ControlStateView,
    ControlThreadView,
    EventView,
    OutboxMessageView,
    OutboxStats,
    ParkedMessageView,
    PostView,
    SeenMarker,
    StatsRow,
    ThreadView,
)
from metawsm.operator.model import Decision
from metawsm.runs.model import RunSnapshot
from metawsm.runs.snapshot import AgentStatus

NonBlank = Annotated[str, msgspec.Meta(min_length=1, pattern=r"\S", description="Required; not blank.")]
Limit = Annotated[int, msgspec.Meta(ge=1, le=500, description="Page size (1..500).")]
Sequence = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1, description="An event sequence number.")]

# -- queries --------------------------------------------------------------------------------------


class _Query(msgspec.Struct, kw_only=True):
    pass


class ThreadFiltersQuery(_Query, kw_only=True):
    ticket: str | None = None
    run_id: str | None = None
    state: StateText | None = None
    priority: PriorityText | None = None
    assignee: str | None = None


class ListThreadsQuery(ThreadFiltersQuery, kw_only=True):
    viewer_type: ViewerTypeText | None = None
    viewer_id: str | None = None
    limit: Limit = 50


class SearchQuery(ListThreadsQuery, kw_only=True):
    query: NonBlank
    cursor: str | None = None


class QueueQuery(ThreadFiltersQuery, kw_only=True):
    type: Annotated[str, msgspec.Meta(extra_json_schema={"enum": ["unseen", "unanswered"]})]
    viewer_type: ViewerTypeText
    viewer_id: NonBlank
    cursor: str | None = None
    limit: Limit = 50


class EventsQuery(_Query, kw_only=True):
    ticket: str | None = None
    run_id: str | None = None
    cursor: Sequence = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class StatsQuery(_Query, kw_only=True):
    ticket: str | None = None
    run_id: str | None = None


class DebugQuery(StatsQuery, kw_only=True):
    limit: Limit = 50


class StreamQuery(_Query, kw_only=True):
    ticket: str | None = None
    run_id: str | None = None
    cursor: Sequence | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class ViewerQuery(_Query, kw_only=True):
    viewer_type: ViewerTypeText | None = None
    viewer_id: str | None = None


# -- responses ------------------------------------------------------------------------------------


class ThreadResponse(msgspec.Struct, kw_only=True):
    thread: ThreadView


class ThreadsResponse(msgspec.Struct, kw_only=True):
    threads: list[ThreadView]


class ThreadPageResponse(msgspec.Struct, kw_only=True):
    threads: list[ThreadView]
    next_cursor: str | None


class ThreadDetailResponse(msgspec.Struct, kw_only=True):
    thread: ThreadView
    posts: list[PostView]
    events: list[EventView]


class AcceptedResponse(msgspec.Struct, kw_only=True):
    accepted: bool
    thread_id: str
    event_id: str


class SeenResponse(msgspec.Struct, kw_only=True):
    seen: SeenMarker


class EventsResponse(msgspec.Struct, kw_only=True):
    events: list[EventView]
    next_cursor: int


class StatsResponse(msgspec.Struct, kw_only=True):
    stats: list[StatsRow]


class TopicDebug(msgspec.Struct, kw_only=True):
    topic: str
    stream: str
    stream_exists: bool
    stream_length: int
    last_generated_id: str | None
    consumer_group_present: bool
    consumer_group_pending: int
    consumer_group_lag: int | None


class BusDebug(msgspec.Struct, kw_only=True, omit_defaults=True):
    running: bool
    healthy: bool
    health_error: str = ""
    redis_url: str
    stream_name: str
    consumer_group: str
    consumer_name: str
    topics: list[TopicDebug]


class ForumDebug(msgspec.Struct, kw_only=True, omit_defaults=True):
    generated_at: str
    ticket: str = ""
    run_id: str = ""
    outbox: OutboxStats
    outbox_messages: list[OutboxMessageView]
    parked: list[ParkedMessageView]
    events: list[EventView]
    threads: list[ThreadView]
    control_threads: list[ControlThreadView]
    control_state: list[ControlStateView]
    projection_lag: dict[str, int]
    bus: BusDebug


class DebugResponse(msgspec.Struct, kw_only=True):
    debug: ForumDebug


class RebuildItem(msgspec.Struct, kw_only=True):
    projection: str
    events_replayed: int
    last_sequence: int
    duration_ms: float


class RebuildBody(msgspec.Struct, kw_only=True):
    projections: list[RebuildItem]


class RebuildResponse(msgspec.Struct, kw_only=True):
    rebuild: RebuildBody


class ReplayedMessage(msgspec.Struct, kw_only=True):
    message_id: str
    topic: str
    status: str


class ReplayResponse(msgspec.Struct, kw_only=True):
    message: ReplayedMessage


class ActorsResponse(msgspec.Struct, kw_only=True):
    actors: ActorNode


# -- runs -----------------------------------------------------------------------------------------


class RunView(RunSnapshot, kw_only=True, omit_defaults=True):
    """A run as the API sends it: its agents also say their ticket and how to attach to them."""

    agents: list[AgentStatus]  # type: ignore[assignment]  # a subclass's list: msgspec encodes what it holds


class RunViewResponse(msgspec.Struct, kw_only=True):
    run: RunView


class RunViewsResponse(msgspec.Struct, kw_only=True):
    runs: list[RunView]


class CrashResponse(msgspec.Struct, kw_only=True):
    crashed: str
    reason: str


class ProjectionLag(msgspec.Struct, kw_only=True):
    outbox_pending: int
    oldest_pending_age_seconds: float
    stream_pending: int | None
    projection_lag: dict[str, int]


class WorkerHealth(msgspec.Struct, kw_only=True):
    running: bool
    last_processed_at: str | None
    total_processed: int
    consecutive_errors: int
    last_error: str
    lag: ProjectionLag


class BusHealth(msgspec.Struct, kw_only=True, omit_defaults=True):
    healthy: bool
    error: str = ""
    redis_url: str
    redis_mode: str = ""  # "external" (found at its URL) or "embedded" (a private redis-server)
    redis_reason: str = ""  # why this Redis was chosen


class ActorSummary(msgspec.Struct, kw_only=True):
    total: int
    alive: int
    restarting: int
    restarts_total: int


class RecoveringActor(msgspec.Struct, kw_only=True):
    """An actor its supervisor is restarting (waiting out a backoff, or starting again)."""

    path: str
    state: Literal["restarting", "starting"]
    restarts: int
    reason: str  # its last failure, "<type>: <message>"


HealthStatus = Literal["ok", "recovering", "degraded", "failed"]


class HealthResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: HealthStatus
    started_at: str
    now: str
    reason: str = ""  # why it is not "ok"
    recovering: list[RecoveringActor] = msgspec.field(default_factory=list)
    worker: WorkerHealth | None = None
    outbox: OutboxStats | None = None
    forum_bus: BusHealth | None = None
    actors: ActorSummary | None = None


# One decision of the operator (docs/operator.md): the stored record, as clients get it.
OperatorDecision = Decision


class StreamEventsFrame(msgspec.Struct, kw_only=True, tag="forum.events", tag_field="type"):
    events: list[EventView]
    next_cursor: int
    sent_at: str


class StreamHeartbeatFrame(msgspec.Struct, kw_only=True, tag="heartbeat", tag_field="type"):
    next_cursor: int
    sent_at: str


class StreamOperatorDecisionFrame(msgspec.Struct, kw_only=True, tag="operator.decision", tag_field="type"):
    """Sent to live stream clients whose filters match the decision's run (docs/operator.md)."""

    decision: Decision


class StreamErrorFrame(msgspec.Struct, kw_only=True, tag="error", tag_field="type"):
    message: str


def as_any(value: Any) -> Any:
    return value
