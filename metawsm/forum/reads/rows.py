"""Turning SQLite rows into the read shapes of :mod:`metawsm.forum.views`.

Optional text columns may be NULL in older rows: they come out as ``""`` (and optional
times as None), which the views then omit from their JSON.  An event's ``payload_json`` is
decoded to an object; a payload that is not valid JSON comes out as ``{"raw": <text>}``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from metawsm.forum.messages import Envelope
from metawsm.forum.views import EventView, PostView, ThreadView

EVENT_COLUMNS = (
    "sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id, ticket,"
    " agent_name, actor_type, actor_name, correlation_id, causation_id, payload_json"
)


def time_or_none(value: Any) -> str | None:
    return value or None


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def thread_header(row: sqlite3.Row) -> dict[str, Any]:
    """The fields a thread view takes straight from a ``forum_threads`` or
    ``forum_thread_views`` row (both have these columns)."""
    return {
        "thread_id": row["thread_id"],
        "ticket": row["ticket"],
        "run_id": as_text(row["run_id"]),
        "agent_name": as_text(row["agent_name"]),
        "title": row["title"],
        "state": row["state"],
        "priority": row["priority"],
        "assignee_type": as_text(row["assignee_type"]),
        "assignee_name": as_text(row["assignee_name"]),
        "opened_by_type": row["opened_by_type"],
        "opened_by_name": as_text(row["opened_by_name"]),
        "opened_at": row["opened_at"],
        "updated_at": row["updated_at"],
        "closed_at": time_or_none(row["closed_at"]),
    }


def thread_view(row: sqlite3.Row, with_flags: bool) -> ThreadView:
    """A ``forum_thread_views`` row; ``with_flags``: it also has ``is_unseen``/``is_unanswered``."""
    view = ThreadView(
        **thread_header(row),
        posts_count=int(row["posts_count"]),
        last_post_at=time_or_none(row["last_post_at"]),
        last_post_by_type=as_text(row["last_post_by_type"]),
        last_post_by_name=as_text(row["last_post_by_name"]),
        last_event_sequence=int(row["last_event_sequence"]),
        last_actor_type=as_text(row["last_actor_type"]),
    )
    if with_flags:
        view.is_unseen = bool(row["is_unseen"])
        view.is_unanswered = bool(row["is_unanswered"])
    return view


def _decode_payload(value: Any) -> dict[str, Any]:
    try:
        decoded = msgspec.json.decode(value if isinstance(value, (str, bytes)) else "{}")
    except msgspec.DecodeError:
        return {"raw": as_text(value)}
    return decoded if isinstance(decoded, dict) else {"value": decoded}


def event_view(row: sqlite3.Row) -> EventView:
    """A ``forum_events`` row selected with :data:`EVENT_COLUMNS`."""
    envelope = Envelope(
        event_id=row["event_id"],
        event_type=row["event_type"],
        event_version=int(row["event_version"] or 1),
        occurred_at=row["occurred_at"],
        thread_id=as_text(row["thread_id"]),
        run_id=as_text(row["run_id"]),
        ticket=as_text(row["ticket"]),
        agent_name=as_text(row["agent_name"]),
        actor_type=row["actor_type"],
        actor_name=as_text(row["actor_name"]),
        correlation_id=as_text(row["correlation_id"]),
        causation_id=as_text(row["causation_id"]),
    )
    payload = _decode_payload(row["payload_json"])
    return EventView(sequence=int(row["sequence"]), envelope=envelope, payload_json=payload)


def post_view(row: sqlite3.Row) -> PostView:
    return PostView(
        post_id=row["post_id"],
        thread_id=row["thread_id"],
        event_id=row["event_id"],
        author_type=row["author_type"],
        author_name=as_text(row["author_name"]),
        body=row["body"],
        created_at=row["created_at"],
    )
