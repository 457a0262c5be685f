"""The forum's query side: lists, detail, search, queues, events, stats and debug data.

:class:`ForumReader` wraps one ``sqlite3`` connection that the caller owns (opens, keeps on
its thread, closes).  Methods that run several statements which must agree run them in one
read transaction (one snapshot); when the caller already has a transaction open on the
connection they run inside it instead.  :meth:`ForumReader.mark_seen` is the only write (a
direct upsert into ``forum_thread_reads``, spec: "not an event"), so it needs a writable
connection; everything else works on a ``read_only`` one.

Decisions worth knowing:

* **Viewer flags.**  With a viewer (``viewer_type`` + ``viewer_id``) thread views carry
  ``is_unseen`` = the thread's last event is newer than the viewer's seen marker (0 when none)
  and was not written by that viewer (actor type and name both equal), and ``is_unanswered``
  = the ``queue_view`` projection's ``needs_answer`` (the last non-system post is by an agent
  and no human/operator post followed), whatever the thread's state.  The name of the last
  actor is read from ``forum_events`` by ``last_event_sequence`` (its integer primary key):
  the read-model tables do not store it.
* **Queues.**  ``unseen`` = ``is_unseen`` above; ``unanswered`` = ``needs_answer``.  Closed
  threads are in neither queue.  Queues filter and paginate on ``forum_thread_queue_view``
  and return the matching ``forum_thread_views`` rows.
* **Missing projection rows.**  :meth:`get_thread` and :meth:`thread_detail` prefer the
  ``thread_views`` read model; a thread that exists only in the write model (its projection
  is lagging or being rebuilt) is built from ``forum_threads``, ``forum_posts`` and
  ``forum_events``, so a 404 (:class:`ThreadNotFound`) means the thread really is unknown.
  Lists, search and queues read only the read models.
* **Search** matches every whitespace-separated term of the query somewhere in the thread
  (its title or any post body), case- and accent-insensitively (FTS5 ``unicode61``).  Each
  term is passed to FTS5 as a quoted string, so FTS syntax in user input (``"``, ``*``, ``-``,
  ``OR``, ``NEAR``, ``col:``) is matched as text, never interpreted; the only syntax kept is a
  trailing ``*`` on a term, meaning "words starting with".  A term without any letter or digit
  is ignored; a query with none at all finds nothing.
* **Pagination** of search and queues is keyset on ``(updated_at, thread_id)`` descending, with
  the opaque cursors of :mod:`metawsm.forum.cursor`; ``next_cursor`` is None on the last page.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import msgspec

from metawsm.clock import format_time, parse_time, utc_now
from metawsm.forum.cursor import decode_thread_cursor, encode_thread_cursor, parse_event_cursor
from metawsm.forum.enums import Priority, QueueType, ThreadState, ViewerType, parse_enum
from metawsm.forum.errors import ForumError, ThreadNotFound
from metawsm.forum.messages import Envelope
from metawsm.forum.projections.registry import PROJECTION_NAMES
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
    ThreadDetail,
    ThreadView,
)
from metawsm.store.db import read_transaction, write_transaction

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
DEFAULT_EVENT_LIMIT = 100
MAX_EVENT_LIMIT = 1000
MAX_SEARCH_TERMS = 32

_STATE_ORDER = {s.value: i for i, s in enumerate(ThreadState)}
_PRIORITY_ORDER = {p.value: i for i, p in enumerate(Priority)}


def _invalid_filter(message: str) -> ForumError:
    return ForumError(message, code="invalid_filter")


def _text(value: Any, name: str) -> str | None:
    """A text filter: None/empty → None; must be a str that SQLite can store (valid UTF-8)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_filter(f"{name} must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _invalid_filter(f"{name} is not valid text") from None
    return value or None


def _enum_filter(enum_type: type[Any], value: Any, name: str) -> str | None:
    text = _text(value, name)
    if text is None:
        return None
    try:
        return str(parse_enum(enum_type, text, name).value)
    except ForumError as exc:
        raise _invalid_filter(exc.message) from None


def _limit(value: Any, default: int, maximum: int = MAX_LIMIT) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ForumError(f"limit must be an integer between 1 and {maximum}", code="invalid_limit")
    return value


@dataclass(frozen=True)
class ThreadFilters:
    """List/search/queue filters; None (or empty) means "any"."""

    ticket: str | None = None
    run_id: str | None = None
    state: str | None = None
    priority: str | None = None
    assignee: str | None = None  # assignee_name

    @classmethod
    def parse(cls, filters: ThreadFilters | Mapping[str, Any] | None = None) -> ThreadFilters:
        """Validate (``invalid_filter``) and normalise filters given as this class or a mapping."""
        if filters is None:
            return cls()
        if isinstance(filters, ThreadFilters):
            raw: dict[str, Any] = {f.name: getattr(filters, f.name) for f in fields(cls)}
        elif isinstance(filters, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(str(k) for k in filters if k not in known)
            if unknown:
                raise _invalid_filter(f'unknown filter "{unknown[0]}": must be one of {", ".join(sorted(known))}')
            raw = dict(filters)
        else:
            raise _invalid_filter("filters must be an object")
        return cls(
            ticket=_text(raw.get("ticket"), "ticket"),
            run_id=_text(raw.get("run_id"), "run_id"),
            state=_enum_filter(ThreadState, raw.get("state"), "state"),
            priority=_enum_filter(Priority, raw.get("priority"), "priority"),
            assignee=_text(raw.get("assignee"), "assignee"),
        )

    def where(self, alias: str, params: dict[str, Any]) -> list[str]:
        """SQL conditions on ``alias`` (a thread view or queue view row); fills ``params``."""
        clauses = []
        for name, column in (
            ("ticket", "ticket"), ("run_id", "run_id"), ("state", "state"),
            ("priority", "priority"), ("assignee", "assignee_name"),
        ):
            value = getattr(self, name)
            if value is not None:
                params[f"f_{name}"] = value
                clauses.append(f"{alias}.{column} = :f_{name}")
        return clauses


@dataclass(frozen=True)
class Viewer:
    """Who is looking: ``viewer_type`` (human|agent) and ``viewer_id`` (an actor name)."""

    viewer_type: str
    viewer_id: str

    @classmethod
    def parse(cls, viewer_type: Any, viewer_id: Any, *, required: bool = False) -> Viewer | None:
        """Both or neither (None); ``invalid_filter`` for a half-given or invalid viewer."""
        vtype = _text(viewer_type, "viewer_type")
        vid = _text(viewer_id, "viewer_id")
        if vtype is None and vid is None and not required:
            return None
        if vtype is None:
            raise _invalid_filter("viewer_type is required")
        if vid is None or not vid.strip():
            raise _invalid_filter("viewer_id is required")
        parsed = _enum_filter(ViewerType, vtype, "viewer_type")
        assert parsed is not None
        return cls(parsed, vid)


def _search_terms(query: str) -> list[str]:
    """FTS5 query strings, one per user term, quoted so user syntax is plain text."""
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in query)
    terms: list[str] = []
    for raw in cleaned.split():
        prefix = raw.endswith("*")
        core = raw.rstrip("*")
        if not any(ch.isalnum() for ch in core):
            continue
        terms.append('"' + core.replace('"', '""') + '"' + ("*" if prefix else ""))
    return terms


def _time(value: Any) -> str | None:
    return value or None


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _thread_view(row: sqlite3.Row, with_flags: bool) -> ThreadView:
    view = ThreadView(
        thread_id=row["thread_id"],
        ticket=row["ticket"],
        run_id=_str(row["run_id"]),
        agent_name=_str(row["agent_name"]),
        title=row["title"],
        state=row["state"],
        priority=row["priority"],
        assignee_type=_str(row["assignee_type"]),
        assignee_name=_str(row["assignee_name"]),
        opened_by_type=row["opened_by_type"],
        opened_by_name=_str(row["opened_by_name"]),
        posts_count=int(row["posts_count"]),
        last_post_at=_time(row["last_post_at"]),
        last_post_by_type=_str(row["last_post_by_type"]),
        last_post_by_name=_str(row["last_post_by_name"]),
        last_event_sequence=int(row["last_event_sequence"]),
        last_actor_type=_str(row["last_actor_type"]),
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        closed_at=_time(row["closed_at"]),
    )
    if with_flags:
        view.is_unseen = bool(row["is_unseen"])
        view.is_unanswered = bool(row["is_unanswered"])
    return view


def _decode_payload(text: Any) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(text if isinstance(text, (str, bytes)) else "{}")
    except msgspec.DecodeError:
        return {"raw": _str(text)}
    return value if isinstance(value, dict) else {"value": value}


def _event_view(row: sqlite3.Row) -> EventView:
    envelope = Envelope(
        event_id=row["event_id"],
        event_type=row["event_type"],
        event_version=int(row["event_version"] or 1),
        occurred_at=row["occurred_at"],
        thread_id=_str(row["thread_id"]),
        run_id=_str(row["run_id"]),
        ticket=_str(row["ticket"]),
        agent_name=_str(row["agent_name"]),
        actor_type=row["actor_type"],
        actor_name=_str(row["actor_name"]),
        correlation_id=_str(row["correlation_id"]),
        causation_id=_str(row["causation_id"]),
    )
    return EventView(sequence=int(row["sequence"]), envelope=envelope, payload_json=_decode_payload(row["payload_json"]))


def _post_view(row: sqlite3.Row) -> PostView:
    return PostView(
        post_id=row["post_id"],
        thread_id=row["thread_id"],
        event_id=row["event_id"],
        author_type=row["author_type"],
        author_name=_str(row["author_name"]),
        body=row["body"],
        created_at=row["created_at"],
    )


_EVENT_COLUMNS = (
    "sequence, event_id, event_type, event_version, occurred_at, thread_id, run_id, ticket,"
    " agent_name, actor_type, actor_name, correlation_id, causation_id, payload_json"
)


class ForumReader:
    """Read queries over one connection owned by the caller (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, *, now: Callable[[], datetime] = utc_now) -> None:
        self._conn = conn
        self._now = now

    # -- plumbing ------------------------------------------------------------------------

    def _rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        cur = self._conn.cursor()
        cur.row_factory = sqlite3.Row
        try:
            return cur.execute(sql, params).fetchall()
        finally:
            cur.close()

    def _one(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        if self._conn.in_transaction:
            yield
            return
        with read_transaction(self._conn):
            yield

    @staticmethod
    def _flags_sql(source: str, viewer: Viewer | None, params: dict[str, Any]) -> tuple[str, str, str]:
        """(is_unseen expression, is_unanswered expression, joins) for rows of ``source``.

        ``source`` is the alias whose ``last_event_sequence`` counts (``v`` or ``q``); the
        joins add ``r`` (seen marker), ``e`` (last event, for the actor's name) and, for a
        thread-view source, ``q`` (needs_answer).  Without a viewer both are NULL.
        """
        if viewer is None:
            return "NULL", "NULL", ""
        params["viewer_type"] = viewer.viewer_type
        params["viewer_id"] = viewer.viewer_id
        joins = (
            " LEFT JOIN forum_thread_reads r ON r.thread_id = v.thread_id"
            " AND r.viewer_type = :viewer_type AND r.viewer_id = :viewer_id"
            f" LEFT JOIN forum_events e ON e.sequence = {source}.last_event_sequence"
        )
        if source != "q":
            joins += " LEFT JOIN forum_thread_queue_view q ON q.thread_id = v.thread_id"
        unseen = (
            f"({source}.last_event_sequence > COALESCE(r.last_seen_event_sequence, 0)"
            f" AND NOT (COALESCE(e.actor_type, {source}.last_actor_type) = :viewer_type"
            " AND COALESCE(e.actor_name, '') = :viewer_id))"
        )
        return unseen, "COALESCE(q.needs_answer, 0)", joins

    @classmethod
    def _flags(cls, source: str, viewer: Viewer | None, params: dict[str, Any]) -> tuple[str, str]:
        """(select expressions ``is_unseen, is_unanswered``, joins)."""
        unseen, unanswered, joins = cls._flags_sql(source, viewer, params)
        return f"{unseen} AS is_unseen, {unanswered} AS is_unanswered", joins

    @staticmethod
    def _page(rows: list[sqlite3.Row], limit: int, with_flags: bool) -> tuple[list[ThreadView], str | None]:
        """Rows fetched with ``LIMIT limit + 1``: the page and the cursor of its last row when
        more follow (the query selects the keyset columns as ``cursor_updated_at/_thread_id``)."""
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = encode_thread_cursor(last["cursor_updated_at"], last["cursor_thread_id"])
        return [_thread_view(r, with_flags) for r in rows], next_cursor

    @staticmethod
    def _keyset(alias: str, cursor: str | None, params: dict[str, Any]) -> list[str]:
        if cursor is None or cursor == "":
            return []
        updated_at, thread_id = decode_thread_cursor(cursor)
        params["cursor_updated_at"] = updated_at
        params["cursor_thread_id"] = thread_id
        return [f"({alias}.updated_at, {alias}.thread_id) < (:cursor_updated_at, :cursor_thread_id)"]

    # -- threads -------------------------------------------------------------------------

    def list_threads(
        self,
        filters: ThreadFilters | Mapping[str, Any] | None = None,
        viewer: Viewer | None = None,
        limit: Any = DEFAULT_LIMIT,
    ) -> list[ThreadView]:
        """Threads matching ``filters``, newest update first (``limit`` 1..500)."""
        parsed = ThreadFilters.parse(filters)
        count = _limit(limit, DEFAULT_LIMIT)
        params: dict[str, Any] = {"limit": count}
        flags, joins = self._flags("v", viewer, params)
        where = parsed.where("v", params)
        sql = (
            f"SELECT v.*, {flags} FROM forum_thread_views v{joins}"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :limit"
        )
        with self._snapshot():
            rows = self._rows(sql, params)
        return [_thread_view(r, viewer is not None) for r in rows]

    def _projected(self, thread_id: str, viewer: Viewer | None) -> ThreadView | None:
        params: dict[str, Any] = {"thread_id": thread_id}
        flags, joins = self._flags("v", viewer, params)
        row = self._one(f"SELECT v.*, {flags} FROM forum_thread_views v{joins} WHERE v.thread_id = :thread_id", params)
        return _thread_view(row, viewer is not None) if row is not None else None

    def _from_write_model(self, thread_id: str, viewer: Viewer | None) -> ThreadView | None:
        """The view of a thread the projection has not caught up with, from the write model."""
        thread = self._one("SELECT * FROM forum_threads WHERE thread_id = ?", (thread_id,))
        if thread is None:
            return None
        posts = self._rows(
            "SELECT author_type, author_name, created_at FROM forum_posts WHERE thread_id = ?"
            " ORDER BY created_at, post_id",
            (thread_id,),
        )
        last_event = self._one(
            "SELECT sequence, actor_type, actor_name FROM forum_events WHERE thread_id = ?"
            " ORDER BY sequence DESC LIMIT 1",
            (thread_id,),
        )
        last_post = posts[-1] if posts else None
        sequence = int(last_event["sequence"]) if last_event is not None else int(thread["version"] or 0)
        view = ThreadView(
            thread_id=thread["thread_id"],
            ticket=thread["ticket"],
            run_id=_str(thread["run_id"]),
            agent_name=_str(thread["agent_name"]),
            title=thread["title"],
            state=thread["state"],
            priority=thread["priority"],
            assignee_type=_str(thread["assignee_type"]),
            assignee_name=_str(thread["assignee_name"]),
            opened_by_type=thread["opened_by_type"],
            opened_by_name=_str(thread["opened_by_name"]),
            posts_count=len(posts),
            last_post_at=last_post["created_at"] if last_post is not None else None,
            last_post_by_type=_str(last_post["author_type"]) if last_post is not None else "",
            last_post_by_name=_str(last_post["author_name"]) if last_post is not None else "",
            last_event_sequence=sequence,
            last_actor_type=_str(last_event["actor_type"]) if last_event is not None else "",
            opened_at=thread["opened_at"],
            updated_at=thread["updated_at"],
            closed_at=_time(thread["closed_at"]),
        )
        if viewer is not None:
            marker = self._one(
                "SELECT last_seen_event_sequence FROM forum_thread_reads"
                " WHERE thread_id = ? AND viewer_type = ? AND viewer_id = ?",
                (thread_id, viewer.viewer_type, viewer.viewer_id),
            )
            seen = int(marker[0]) if marker is not None else 0
            by_viewer = last_event is not None and (
                last_event["actor_type"] == viewer.viewer_type and _str(last_event["actor_name"]) == viewer.viewer_id
            )
            needs_answer = False
            for post in posts:
                if post["author_type"] == "agent":
                    needs_answer = True
                elif post["author_type"] in ("human", "operator"):
                    needs_answer = False
            view.is_unseen = sequence > seen and not by_viewer
            view.is_unanswered = needs_answer
        return view

    def get_thread(self, thread_id: str, viewer: Viewer | None = None) -> ThreadView:
        """One thread; :class:`ThreadNotFound` when neither projected nor in the write model."""
        with self._snapshot():
            view = self._projected(thread_id, viewer) or self._from_write_model(thread_id, viewer)
        if view is None:
            raise ThreadNotFound(thread_id)
        return view

    def thread_detail(self, thread_id: str, viewer: Viewer | None = None) -> ThreadDetail:
        """Thread view + posts (oldest first) + the thread's events (sequence order)."""
        with self._snapshot():
            view = self._projected(thread_id, viewer) or self._from_write_model(thread_id, viewer)
            if view is None:
                raise ThreadNotFound(thread_id)
            posts = self._rows(
                "SELECT * FROM forum_posts WHERE thread_id = ? ORDER BY created_at, post_id", (thread_id,)
            )
            events = self._rows(
                f"SELECT {_EVENT_COLUMNS} FROM forum_events WHERE thread_id = ? ORDER BY sequence", (thread_id,)
            )
        return ThreadDetail(thread=view, posts=[_post_view(p) for p in posts], events=[_event_view(e) for e in events])

    def search(
        self,
        query: Any,
        filters: ThreadFilters | Mapping[str, Any] | None = None,
        cursor: str | None = None,
        limit: Any = DEFAULT_LIMIT,
        viewer: Viewer | None = None,
    ) -> tuple[list[ThreadView], str | None]:
        """Threads whose title or posts contain every term of ``query`` (see module doc)."""
        if not isinstance(query, str) or not query.strip():
            raise _invalid_filter("query is required")
        parsed = ThreadFilters.parse(filters)
        count = _limit(limit, DEFAULT_LIMIT)
        terms = _search_terms(query)
        if len(terms) > MAX_SEARCH_TERMS:
            raise _invalid_filter(f"query has too many terms (at most {MAX_SEARCH_TERMS})")
        params: dict[str, Any] = {"limit": count + 1}
        where = parsed.where("v", params) + self._keyset("v", cursor, params)
        if not terms:
            return [], None
        hits = []
        for i, term in enumerate(terms):
            params[f"term_{i}"] = term
            hits.append(f"SELECT thread_id FROM forum_search WHERE forum_search MATCH :term_{i}")
        flags, joins = self._flags("v", viewer, params)
        where.insert(0, "v.thread_id IN (SELECT thread_id FROM hits)")
        sql = (
            f"WITH hits(thread_id) AS ({' INTERSECT '.join(hits)})"
            f" SELECT v.*, v.updated_at AS cursor_updated_at, v.thread_id AS cursor_thread_id, {flags}"
            f" FROM forum_thread_views v{joins} WHERE {' AND '.join(where)}"
            " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :limit"
        )
        with self._snapshot():
            rows = self._rows(sql, params)
        return self._page(rows, count, viewer is not None)

    def queue(
        self,
        queue_type: Any,
        viewer_type: Any,
        viewer_id: Any,
        filters: ThreadFilters | Mapping[str, Any] | None = None,
        cursor: str | None = None,
        limit: Any = DEFAULT_LIMIT,
    ) -> tuple[list[ThreadView], str | None]:
        """The viewer's ``unseen`` or ``unanswered`` queue (closed threads excluded)."""
        kind = _enum_filter(QueueType, queue_type, "type")
        if kind is None:
            raise _invalid_filter(f"type is required: one of {', '.join(q.value for q in QueueType)}")
        viewer = Viewer.parse(viewer_type, viewer_id, required=True)
        assert viewer is not None
        parsed = ThreadFilters.parse(filters)
        count = _limit(limit, DEFAULT_LIMIT)
        params: dict[str, Any] = {"limit": count + 1}
        unseen, _, _ = self._flags_sql("q", viewer, params)
        flags, joins = self._flags("q", viewer, params)
        where = ["q.state != 'closed'", *parsed.where("q", params), *self._keyset("q", cursor, params)]
        where.append(unseen if kind == QueueType.UNSEEN.value else "q.needs_answer = 1")
        sql = (
            f"SELECT v.*, q.updated_at AS cursor_updated_at, q.thread_id AS cursor_thread_id, {flags}"
            f" FROM forum_thread_queue_view q JOIN forum_thread_views v ON v.thread_id = q.thread_id{joins}"
            f" WHERE {' AND '.join(where)}"
            " ORDER BY q.updated_at DESC, q.thread_id DESC LIMIT :limit"
        )
        with self._snapshot():
            rows = self._rows(sql, params)
        return self._page(rows, count, True)

    # -- events, stats, control ----------------------------------------------------------

    def events_after(
        self, ticket: str | None = None, run_id: str | None = None, cursor: Any = 0, limit: Any = DEFAULT_EVENT_LIMIT
    ) -> tuple[list[EventView], int]:
        """Events with ``sequence > cursor`` (optionally of a ticket/run), in order.

        ``next_cursor`` is the last returned sequence, or ``cursor`` itself when none.
        """
        after = parse_event_cursor(cursor)
        count = _limit(limit, DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT)
        clauses = ["sequence > ?"]
        params: list[Any] = [after]
        for column, value in (("ticket", _text(ticket, "ticket")), ("run_id", _text(run_id, "run_id"))):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM forum_events WHERE {' AND '.join(clauses)} ORDER BY sequence LIMIT ?",
            (*params, count),
        )
        events = [_event_view(r) for r in rows]
        return events, (events[-1].sequence if events else after)

    def latest_sequence(self) -> int:
        row = self._one("SELECT COALESCE(MAX(sequence), 0) FROM forum_events")
        return int(row[0]) if row is not None else 0

    def stats(self, ticket: str | None = None, run_id: str | None = None) -> list[StatsRow]:
        """Thread counts per (ticket, run_id, state, priority), optionally of one ticket/run."""
        clauses, params = [], []
        for column, value in (("ticket", _text(ticket, "ticket")), ("run_id", _text(run_id, "run_id"))):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            "SELECT ticket, run_id, state, priority, thread_count FROM forum_thread_stats"
            + (" WHERE " + " AND ".join(clauses) if clauses else ""),
            params,
        )
        result = [
            StatsRow(
                ticket=r["ticket"], run_id=_str(r["run_id"]), state=r["state"], priority=r["priority"],
                thread_count=int(r["thread_count"]),
            )
            for r in rows
        ]
        result.sort(
            key=lambda s: (
                s.ticket, s.run_id, _STATE_ORDER.get(s.state, 99), s.state,
                _PRIORITY_ORDER.get(s.priority, 99), s.priority,
            )
        )
        return result

    def control_state(self, run_id: str | None = None, agent_name: str | None = None) -> list[ControlStateView]:
        """Control state per (run, agent), ordered by run then agent."""
        clauses, params = [], []
        for column, value in (("run_id", _text(run_id, "run_id")), ("agent_name", _text(agent_name, "agent_name"))):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            "SELECT * FROM forum_control_state"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY run_id, agent_name",
            params,
        )
        return [
            ControlStateView(
                run_id=r["run_id"],
                agent_name=r["agent_name"],
                ticket=_str(r["ticket"]),
                thread_id=_str(r["thread_id"]),
                pending_guidance=bool(r["pending_guidance"]),
                pending_question=_str(r["pending_question"]),
                pending_context=_str(r["pending_context"]),
                pending_event_id=_str(r["pending_event_id"]),
                completion_signalled=bool(r["completion_signalled"]),
                completion_summary=_str(r["completion_summary"]),
                validation_status=_str(r["validation_status"]),
                validation_done_criteria=_str(r["validation_done_criteria"]),
                last_signal_at=_time(r["last_signal_at"]),
                last_event_sequence=int(r["last_event_sequence"]),
            )
            for r in rows
        ]

    def control_threads(self, ticket: str | None = None, run_id: str | None = None) -> list[ControlThreadView]:
        clauses, params = [], []
        for column, value in (("ticket", _text(ticket, "ticket")), ("run_id", _text(run_id, "run_id"))):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            "SELECT run_id, agent_name, thread_id, ticket, created_at FROM forum_control_threads"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY created_at, run_id, agent_name",
            params,
        )
        return [
            ControlThreadView(
                run_id=r["run_id"], agent_name=r["agent_name"], thread_id=r["thread_id"], ticket=r["ticket"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    # -- pipeline / debug ----------------------------------------------------------------

    def outbox_stats(self) -> OutboxStats:
        with self._snapshot():
            counts = {r[0]: int(r[1]) for r in self._rows("SELECT status, count(*) FROM forum_outbox GROUP BY status")}
            oldest_row = self._one("SELECT MIN(created_at) FROM forum_outbox WHERE status = 'pending'")
            parked_row = self._one(
                "SELECT count(*) FROM (SELECT message_id FROM forum_outbox WHERE status = 'parked'"
                " UNION SELECT message_id FROM forum_parked_messages WHERE replayed_at IS NULL)"
            )
        oldest = oldest_row[0] if oldest_row is not None else None
        age = 0.0
        if oldest:
            try:
                age = max(0.0, (self._now() - parse_time(oldest)).total_seconds())
            except ValueError:
                age = 0.0
        return OutboxStats(
            pending_count=counts.get("pending", 0),
            processing_count=counts.get("processing", 0),
            failed_count=counts.get("failed", 0),
            parked_count=int(parked_row[0]) if parked_row is not None else 0,
            sent_count=counts.get("sent", 0),
            oldest_pending_at=oldest or None,
            oldest_pending_age_seconds=round(age, 6),
        )

    def latest_outbox(
        self, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
    ) -> list[OutboxMessageView]:
        """Newest outbox rows first; ticket/run filters read the message's envelope."""
        count = _limit(limit, DEFAULT_LIMIT)
        clauses, params = [], []
        for field_name, value in (("ticket", _text(ticket, "ticket")), ("run_id", _text(run_id, "run_id"))):
            if value is not None:
                clauses.append(
                    "(CASE WHEN json_valid(payload_json)"
                    f" THEN json_extract(payload_json, '$.envelope.{field_name}') END) = ?"
                )
                params.append(value)
        rows = self._rows(
            "SELECT id, message_id, topic, message_key, status, attempt_count, last_error, created_at,"
            " updated_at, sent_at FROM forum_outbox"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY id DESC LIMIT ?",
            (*params, count),
        )
        return [
            OutboxMessageView(
                id=int(r["id"]), message_id=r["message_id"], topic=r["topic"], message_key=_str(r["message_key"]),
                status=r["status"], attempt_count=int(r["attempt_count"]), last_error=_str(r["last_error"]),
                created_at=r["created_at"], updated_at=r["updated_at"], sent_at=_time(r["sent_at"]),
            )
            for r in rows
        ]

    def parked(self, limit: Any = DEFAULT_LIMIT) -> list[ParkedMessageView]:
        """Parked stream entries, newest first (replayed ones too, with ``replayed_at``)."""
        count = _limit(limit, DEFAULT_LIMIT)
        rows = self._rows(
            "SELECT message_id, topic, stream, stream_entry_id, attempts, last_error, parked_at, replayed_at"
            " FROM forum_parked_messages ORDER BY parked_at DESC, message_id DESC LIMIT ?",
            (count,),
        )
        return [
            ParkedMessageView(
                message_id=r["message_id"], topic=r["topic"], stream=r["stream"],
                stream_entry_id=_str(r["stream_entry_id"]), attempts=int(r["attempts"]),
                last_error=_str(r["last_error"]), parked_at=r["parked_at"], replayed_at=_time(r["replayed_at"]),
            )
            for r in rows
        ]

    def latest_events(
        self, limit: Any = DEFAULT_LIMIT, ticket: str | None = None, run_id: str | None = None
    ) -> list[EventView]:
        """The newest events first (debug snapshot)."""
        count = _limit(limit, DEFAULT_LIMIT)
        clauses, params = [], []
        for column, value in (("ticket", _text(ticket, "ticket")), ("run_id", _text(run_id, "run_id"))):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM forum_events"
            + (" WHERE " + " AND ".join(clauses) if clauses else "")
            + " ORDER BY sequence DESC LIMIT ?",
            (*params, count),
        )
        return [_event_view(r) for r in rows]

    def projection_checkpoints(self) -> dict[str, int]:
        """Last applied sequence per projection: every known name (0 when it has none yet)."""
        result = dict.fromkeys(PROJECTION_NAMES, 0)
        for row in self._rows("SELECT projection_name, last_sequence FROM forum_projection_checkpoints"):
            result[row[0]] = int(row[1])
        return result

    def projection_lag(self) -> dict[str, int]:
        """max(forum_events.sequence) − checkpoint, per projection in PROJECTION_NAMES."""
        with self._snapshot():
            latest = self.latest_sequence()
            checkpoints = self.projection_checkpoints()
        return {name: max(0, latest - checkpoints.get(name, 0)) for name in PROJECTION_NAMES}

    # -- the one write -------------------------------------------------------------------

    def mark_seen(
        self, thread_id: str, viewer_type: Any, viewer_id: Any, sequence: Any = None
    ) -> SeenMarker:
        """Record that a viewer has seen ``thread_id`` up to ``sequence`` (default: the thread's
        latest event).  A marker never moves backwards: an older sequence leaves it as it is.
        Needs a writable connection; runs in its own write transaction."""
        try:
            viewer = Viewer.parse(viewer_type, viewer_id, required=True)
        except ForumError as exc:
            raise ForumError(exc.message, code="invalid_value") from None
        assert viewer is not None
        if sequence is not None and (isinstance(sequence, bool) or not isinstance(sequence, int) or sequence < 0):
            raise ForumError("last_seen_event_sequence must be a non-negative integer", code="invalid_value")
        seen_at = format_time(self._now())
        with write_transaction(self._conn):
            exists = self._one(
                "SELECT 1 FROM forum_threads WHERE thread_id = :t"
                " UNION ALL SELECT 1 FROM forum_thread_views WHERE thread_id = :t LIMIT 1",
                {"t": thread_id},
            )
            if exists is None:
                raise ThreadNotFound(thread_id)
            if sequence is None:
                row = self._one(
                    "SELECT COALESCE((SELECT MAX(sequence) FROM forum_events WHERE thread_id = :t),"
                    " (SELECT last_event_sequence FROM forum_thread_views WHERE thread_id = :t), 0)",
                    {"t": thread_id},
                )
                sequence = int(row[0]) if row is not None else 0
            self._conn.execute(
                "INSERT INTO forum_thread_reads (thread_id, viewer_type, viewer_id, last_seen_event_sequence,"
                " seen_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (thread_id, viewer_type, viewer_id) DO UPDATE SET"
                " seen_at = CASE WHEN excluded.last_seen_event_sequence >= last_seen_event_sequence"
                " THEN excluded.seen_at ELSE seen_at END,"
                " last_seen_event_sequence = MAX(last_seen_event_sequence, excluded.last_seen_event_sequence)",
                (thread_id, viewer.viewer_type, viewer.viewer_id, sequence, seen_at),
            )
            row = self._one(
                "SELECT last_seen_event_sequence, seen_at FROM forum_thread_reads"
                " WHERE thread_id = ? AND viewer_type = ? AND viewer_id = ?",
                (thread_id, viewer.viewer_type, viewer.viewer_id),
            )
        assert row is not None
        return SeenMarker(
            thread_id=thread_id, viewer_type=viewer.viewer_type, viewer_id=viewer.viewer_id,
            last_seen_event_sequence=int(row[0]), seen_at=row[1],
        )
