"""The forum's read shapes, as the HTTP API, the CLI and the WebSocket stream encode them.

All Structs use ``omit_defaults=True``: an optional string that is empty or an optional time
that is null is left out of the JSON (api.md: "Empty optional strings and null times are
omitted").  Counters, sequences and flags that always have a meaningful value are declared
without a default, so they are always present, even when 0/false.

``EventView.payload_json`` is the event payload as a **decoded JSON object** (not the raw
string stored in ``forum_events.payload_json``): API users get a nested object they can read
directly.  It is the msgspec encoding of the event's payload Struct, so it includes the
``"type"`` tag (e.g. ``"forum.post.added"``) next to the payload fields.
"""

from __future__ import annotations

from typing import Any

import msgspec

from metawsm.forum.messages import Envelope, EventMessage


class ThreadView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One thread as listed/returned.  ``is_unseen``/``is_unanswered`` only with a viewer."""

    thread_id: str
    ticket: str
    run_id: str = ""
    agent_name: str = ""
    title: str
    state: str
    priority: str
    assignee_type: str = ""
    assignee_name: str = ""
    opened_by_type: str
    opened_by_name: str = ""
    posts_count: int
    last_post_at: str | None = None
    last_post_by_type: str = ""
    last_post_by_name: str = ""
    last_event_sequence: int
    last_actor_type: str = ""
    is_unseen: bool | None = None
    is_unanswered: bool | None = None
    opened_at: str
    updated_at: str
    closed_at: str | None = None


class PostView(msgspec.Struct, kw_only=True, omit_defaults=True):
    post_id: str
    thread_id: str
    event_id: str
    author_type: str
    author_name: str = ""
    body: str
    created_at: str


class EventView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One ``forum_events`` row: ``payload_json`` is the decoded payload object (see module doc)."""

    sequence: int
    envelope: Envelope
    payload_json: dict[str, Any]

    @classmethod
    def from_message(cls, event: EventMessage) -> EventView:
        """The same shape built from an in-memory event (e.g. for live WebSocket frames)."""
        payload = msgspec.to_builtins(event.payload)
        return cls(sequence=event.sequence, envelope=event.envelope, payload_json=payload)


class ThreadDetail(msgspec.Struct, kw_only=True):
    thread: ThreadView
    posts: list[PostView]
    events: list[EventView]


class ThreadPage(msgspec.Struct, kw_only=True):
    """``{"threads", "next_cursor"}``; ``next_cursor`` is null on the last page."""

    threads: list[ThreadView]
    next_cursor: str | None


class EventPage(msgspec.Struct, kw_only=True):
    """``{"events", "next_cursor"}``; ``next_cursor`` is the last sequence returned (or the
    request's cursor when nothing new), so a client can always pass it back."""

    events: list[EventView]
    next_cursor: int


class StatsRow(msgspec.Struct, kw_only=True):
    ticket: str
    run_id: str
    state: str
    priority: str
    thread_count: int


class ControlStateView(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    agent_name: str
    ticket: str = ""
    thread_id: str = ""
    pending_guidance: bool
    pending_question: str = ""
    pending_context: str = ""
    pending_event_id: str = ""
    completion_signalled: bool
    completion_summary: str = ""
    validation_status: str = ""
    validation_done_criteria: str = ""
    last_signal_at: str | None = None
    last_event_sequence: int


class ControlThreadView(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    agent_name: str
    thread_id: str
    ticket: str
    created_at: str


class OutboxStats(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Outbox counts by status.  ``parked_count`` counts poison entries not yet replayed:
    outbox rows with status ``parked`` plus stream entries in ``forum_parked_messages``
    (deduplicated by message id).  ``oldest_pending_at`` is omitted when nothing is pending;
    ``oldest_pending_age_seconds`` is then 0."""

    pending_count: int
    processing_count: int
    failed_count: int
    parked_count: int
    sent_count: int
    oldest_pending_at: str | None = None
    oldest_pending_age_seconds: float


class OutboxMessageView(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: int
    message_id: str
    topic: str
    message_key: str = ""
    status: str
    attempt_count: int
    last_error: str = ""
    created_at: str
    updated_at: str
    sent_at: str | None = None


class ParkedMessageView(msgspec.Struct, kw_only=True, omit_defaults=True):
    message_id: str
    topic: str
    stream: str
    stream_entry_id: str = ""
    attempts: int
    last_error: str = ""
    parked_at: str
    replayed_at: str | None = None


class SeenMarker(msgspec.Struct, kw_only=True):
    thread_id: str
    viewer_type: str
    viewer_id: str
    last_seen_event_sequence: int
    seen_at: str
