"""Forum tables (migration 1): write model, event log, transport, read models.

Table and column names are a contract: the operator runbook runs SQL against them verbatim
(docs/store.md lists them). Times are TEXT in RFC 3339 UTC as written by
``metawsm.clock.now_text()`` (fixed width, so they sort as times). NOT NULL marks what
always exists (ids, types, required fields, times of things that happened); columns used as
filters (``run_id``, ``agent_name``, ``assignee_name``, ...) are NOT NULL DEFAULT ``''`` so a
filter compares with ``=``; other optional text defaults to ``''`` but tolerates NULL.
Times of things that may not have happened yet (``closed_at``, ``sent_at``,
``replayed_at``, ...) are NULL until they do.

Enum values (states, priorities, statuses) are validated by the domain layer, not by CHECK
constraints: one place owns the allowed values and their error messages.

Ownership (who writes what) is listed in :data:`TABLES_BY_OWNER`; each projection owns the
tables in :data:`PROJECTION_TABLES` and nothing else, which is what a rebuild clears.

Sequence rule for ``forum_events``: the writer assigns ``sequence`` itself as
``max(sequence) + 1`` (see :func:`next_event_sequence`) inside the same ``BEGIN IMMEDIATE``
transaction that inserts the row. Writers are serialised by that lock, rows are never
deleted, and a rolled-back insert leaves nothing behind, so the log is gap-free and
increasing; there is deliberately no AUTOINCREMENT (whose counter can skip numbers).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing sqlite-utils is slow; only migrations that run need it
    import sqlite_utils

WRITE_MODEL_TABLES = (
    "forum_threads",
    "forum_posts",
    "forum_assignments",
    "forum_state_transitions",
    "forum_control_threads",
    "forum_command_results",
)
LOG_TABLES = ("forum_events",)
TRANSPORT_TABLES = ("forum_outbox", "forum_parked_messages")
PROJECTION_TABLES: dict[str, tuple[str, ...]] = {
    "thread_views": ("forum_thread_views", "forum_search"),
    "thread_stats": ("forum_thread_stats",),
    "queue_view": ("forum_thread_queue_view",),
    "control_state": ("forum_control_state",),
}
# The search index's thread keys (migration 12): owned and cleared by thread_views with
# ``forum_search``, listed apart because it is bookkeeping of that index, not a read model.
SEARCH_KEY_TABLES = ("forum_search_threads",)
# Not cleared by a projection rebuild: seen markers are direct writes (mark_seen), and the
# ledger/checkpoints are the rebuild machinery itself.
READ_SIDE_TABLES = (
    "forum_thread_reads",
    "forum_projection_events",
    "forum_projection_checkpoints",
)
TABLES_BY_OWNER: dict[str, tuple[str, ...]] = {
    "write model (CommandHandler)": WRITE_MODEL_TABLES,
    "log (CommandHandler)": LOG_TABLES,
    "transport (CommandIntake, CommandHandler, OutboxRelay, StreamConsumer)": TRANSPORT_TABLES,
    "read models (projections)": tuple(t for ts in PROJECTION_TABLES.values() for t in ts) + SEARCH_KEY_TABLES,
    "read side bookkeeping": READ_SIDE_TABLES,
}
ALL_TABLES: tuple[str, ...] = tuple(t for ts in TABLES_BY_OWNER.values() for t in ts)


def next_event_sequence(conn: sqlite3.Connection) -> int:
    """The next ``forum_events.sequence``; call it inside the write transaction that inserts."""
    row = conn.execute("SELECT COALESCE(MAX(sequence), 0) + 1 FROM forum_events").fetchone()
    return int(row[0])


def _index(db: sqlite_utils.Database, table: str, *columns: str, unique: bool = False) -> None:
    prefix = "ux" if unique else "ix"
    db.table(table).create_index(list(columns), index_name=f"{prefix}_{table}_{'_'.join(columns)}", unique=unique)


def _write_model(db: sqlite_utils.Database) -> None:
    db.create_table(
        "forum_threads",
        {
            "thread_id": str,
            "ticket": str,
            "run_id": str,
            "agent_name": str,
            "title": str,
            "state": str,
            "priority": str,
            "assignee_type": str,
            "assignee_name": str,
            "opened_by_type": str,
            "opened_by_name": str,
            "is_control": int,
            "content_hash": str,  # hash of the opening content: same id + same hash = retry
            "version": int,  # sequence of the last event applied to this thread
            "opened_at": str,
            "updated_at": str,
            "closed_at": str,
        },
        pk="thread_id",
        not_null={
            "thread_id", "ticket", "run_id", "agent_name", "title", "state", "priority",
            "assignee_type", "assignee_name", "opened_by_type", "opened_by_name", "is_control",
            "content_hash", "version", "opened_at", "updated_at",
        },
        defaults={
            "run_id": "", "agent_name": "", "state": "new", "priority": "normal",
            "assignee_type": "", "assignee_name": "", "opened_by_name": "", "is_control": 0,
            "content_hash": "", "version": 0,
        },
    )
    db.create_table(
        "forum_posts",
        {
            "post_id": str,
            "thread_id": str,
            "event_id": str,
            "author_type": str,
            "author_name": str,
            "body": str,
            "created_at": str,
        },
        pk="post_id",
        not_null={"post_id", "thread_id", "event_id", "author_type", "body", "created_at"},
        defaults={"author_name": ""},
        foreign_keys=[("thread_id", "forum_threads", "thread_id")],
    )
    _index(db, "forum_posts", "event_id", unique=True)
    _index(db, "forum_posts", "thread_id", "created_at")  # thread detail: posts oldest first

    db.create_table(
        "forum_assignments",
        {
            "id": int,
            "thread_id": str,
            "event_id": str,
            "assignee_type": str,
            "assignee_name": str,
            "assignment_note": str,
            "assigned_by_type": str,
            "assigned_by_name": str,
            "assigned_at": str,
        },
        pk="id",
        not_null={
            "thread_id", "event_id", "assignee_type", "assignee_name", "assigned_by_type",
            "assigned_at",
        },
        defaults={"assignment_note": "", "assigned_by_name": ""},
        foreign_keys=[("thread_id", "forum_threads", "thread_id")],
    )
    _index(db, "forum_assignments", "event_id", unique=True)
    _index(db, "forum_assignments", "thread_id", "id")

    db.create_table(
        "forum_state_transitions",
        {
            "id": int,
            "thread_id": str,
            "event_id": str,
            "from_state": str,
            "to_state": str,
            "actor_type": str,
            "actor_name": str,
            "changed_at": str,
        },
        pk="id",
        not_null={"thread_id", "event_id", "from_state", "to_state", "actor_type", "changed_at"},
        defaults={"actor_name": ""},
        foreign_keys=[("thread_id", "forum_threads", "thread_id")],
    )
    _index(db, "forum_state_transitions", "event_id", unique=True)
    _index(db, "forum_state_transitions", "thread_id", "id")

    db.create_table(
        "forum_control_threads",
        {"run_id": str, "agent_name": str, "thread_id": str, "ticket": str, "created_at": str},
        pk=("run_id", "agent_name"),
        not_null={"run_id", "agent_name", "thread_id", "ticket", "created_at"},
        foreign_keys=[("thread_id", "forum_threads", "thread_id")],
    )
    _index(db, "forum_control_threads", "thread_id", unique=True)

    # The handler's verdict per command event id: what a waiting caller is told, and what
    # makes a redelivered command a no-op. No foreign key: a rejected command may name a
    # thread that does not exist.
    db.create_table(
        "forum_command_results",
        {
            "event_id": str,
            "command_type": str,
            "thread_id": str,
            "status": str,  # applied | rejected
            "error_code": str,
            "error_message": str,
            "sequence": int,  # forum_events.sequence when applied, NULL when rejected
            "decided_at": str,
        },
        pk="event_id",
        not_null={"event_id", "command_type", "status", "decided_at"},
        defaults={"thread_id": "", "error_code": "", "error_message": ""},
    )


def _log(db: sqlite_utils.Database) -> None:
    db.create_table(
        "forum_events",
        {
            "sequence": int,  # INTEGER PRIMARY KEY, assigned as max+1 by the writer
            "event_id": str,
            "event_type": str,
            "event_version": int,
            "occurred_at": str,
            "thread_id": str,
            "run_id": str,
            "ticket": str,
            "agent_name": str,
            "actor_type": str,
            "actor_name": str,
            "correlation_id": str,
            "causation_id": str,
            "payload_json": str,
        },
        pk="sequence",
        not_null={"event_id", "event_type", "event_version", "occurred_at", "actor_type", "payload_json"},
        defaults={
            "event_version": 1, "thread_id": "", "run_id": "", "ticket": "", "agent_name": "",
            "actor_name": "", "correlation_id": "", "causation_id": "", "payload_json": "{}",
        },
    )
    _index(db, "forum_events", "event_id", unique=True)
    _index(db, "forum_events", "ticket", "sequence")
    _index(db, "forum_events", "run_id", "sequence")
    _index(db, "forum_events", "thread_id", "sequence")


def _transport(db: sqlite_utils.Database) -> None:
    db.create_table(
        "forum_outbox",
        {
            "id": int,
            "message_id": str,
            "topic": str,
            "message_key": str,
            "payload_json": str,
            "status": str,  # pending | processing | sent | failed | parked
            "attempt_count": int,
            "last_error": str,
            "created_at": str,
            "updated_at": str,
            "sent_at": str,
        },
        pk="id",
        not_null={
            "message_id", "topic", "payload_json", "status", "attempt_count", "created_at",
            "updated_at",
        },
        defaults={"message_key": "", "status": "pending", "attempt_count": 0, "last_error": ""},
    )
    _index(db, "forum_outbox", "message_id", unique=True)
    _index(db, "forum_outbox", "status", "id")  # relay: oldest pending first

    db.create_table(
        "forum_parked_messages",
        {
            "message_id": str,
            "topic": str,
            "stream": str,
            "stream_entry_id": str,
            "payload_json": str,
            "attempts": int,
            "last_error": str,
            "parked_at": str,
            "replayed_at": str,
        },
        pk="message_id",
        not_null={"message_id", "topic", "stream", "payload_json", "attempts", "parked_at"},
        defaults={"stream_entry_id": "", "attempts": 0, "last_error": ""},
    )


def _read_models(db: sqlite_utils.Database) -> None:
    db.create_table(
        "forum_thread_views",
        {
            "thread_id": str,
            "ticket": str,
            "run_id": str,
            "agent_name": str,
            "title": str,
            "state": str,
            "priority": str,
            "assignee_type": str,
            "assignee_name": str,
            "opened_by_type": str,
            "opened_by_name": str,
            "is_control": int,
            "posts_count": int,
            "last_post_at": str,
            "last_post_by_type": str,
            "last_post_by_name": str,
            "last_event_sequence": int,
            "last_actor_type": str,
            "opened_at": str,
            "updated_at": str,
            "closed_at": str,
        },
        pk="thread_id",
        not_null={
            "thread_id", "ticket", "run_id", "agent_name", "title", "state", "priority",
            "assignee_type", "assignee_name", "opened_by_type", "opened_by_name", "is_control",
            "posts_count", "last_post_by_type", "last_post_by_name", "last_event_sequence",
            "last_actor_type", "opened_at", "updated_at",
        },
        defaults={
            "run_id": "", "agent_name": "", "assignee_type": "", "assignee_name": "",
            "opened_by_name": "", "is_control": 0, "posts_count": 0, "last_post_by_type": "",
            "last_post_by_name": "", "last_event_sequence": 0, "last_actor_type": "",
        },
    )
    # List: newest update first, optionally filtered; thread_id breaks ties for cursors.
    # SQLite walks these backwards for DESC, so no descending indexes are needed.
    _index(db, "forum_thread_views", "updated_at", "thread_id")
    for column in ("ticket", "run_id", "state", "priority", "assignee_name"):
        _index(db, "forum_thread_views", column, "updated_at", "thread_id")

    db.create_table(
        "forum_thread_stats",
        {"ticket": str, "run_id": str, "state": str, "priority": str, "thread_count": int},
        pk=("ticket", "run_id", "state", "priority"),
        not_null={"ticket", "run_id", "state", "priority", "thread_count"},
        defaults={"run_id": "", "thread_count": 0},
    )
    _index(db, "forum_thread_stats", "run_id")

    db.create_table(
        "forum_thread_queue_view",
        {
            "thread_id": str,
            "ticket": str,
            "run_id": str,
            "agent_name": str,
            "state": str,
            "priority": str,
            "assignee_name": str,
            "last_event_sequence": int,
            "last_actor_type": str,
            # 1 when the last non-system post is by an agent and no human/operator post followed
            "needs_answer": int,
            "updated_at": str,
        },
        pk="thread_id",
        not_null={
            "thread_id", "ticket", "run_id", "agent_name", "state", "priority", "assignee_name",
            "last_event_sequence", "last_actor_type", "needs_answer", "updated_at",
        },
        defaults={
            "run_id": "", "agent_name": "", "assignee_name": "", "last_event_sequence": 0,
            "last_actor_type": "", "needs_answer": 0,
        },
    )
    _index(db, "forum_thread_queue_view", "needs_answer", "updated_at", "thread_id")
    _index(db, "forum_thread_queue_view", "updated_at", "thread_id")
    _index(db, "forum_thread_queue_view", "ticket", "updated_at", "thread_id")
    _index(db, "forum_thread_queue_view", "run_id", "updated_at", "thread_id")

    db.create_table(
        "forum_thread_reads",
        {
            "thread_id": str,
            "viewer_type": str,
            "viewer_id": str,
            "last_seen_event_sequence": int,
            "seen_at": str,
        },
        pk=("thread_id", "viewer_type", "viewer_id"),
        not_null={"thread_id", "viewer_type", "viewer_id", "last_seen_event_sequence", "seen_at"},
        defaults={"last_seen_event_sequence": 0},
    )
    _index(db, "forum_thread_reads", "viewer_type", "viewer_id")

    db.create_table(
        "forum_control_state",
        {
            "run_id": str,
            "agent_name": str,
            "ticket": str,
            "thread_id": str,
            "pending_guidance": int,
            "pending_question": str,
            "pending_context": str,
            "pending_event_id": str,
            "completion_signalled": int,
            "completion_summary": str,
            "validation_status": str,
            "validation_done_criteria": str,
            "last_signal_at": str,
            "last_event_sequence": int,
        },
        pk=("run_id", "agent_name"),
        not_null={
            "run_id", "agent_name", "pending_guidance", "completion_signalled",
            "last_event_sequence",
        },
        defaults={
            "ticket": "", "thread_id": "", "pending_guidance": 0, "pending_question": "",
            "pending_context": "", "pending_event_id": "", "completion_signalled": 0,
            "completion_summary": "", "validation_status": "", "validation_done_criteria": "",
            "last_event_sequence": 0,
        },
    )

    # Full-text search over titles and post bodies, written by the thread_views projection
    # (no triggers: the projection decides what is indexed and clears it on rebuild).
    # unicode61 folds case; remove_diacritics 2 makes "cafe" find "café".
    db.execute(
        "CREATE VIRTUAL TABLE forum_search USING fts5("
        "thread_id UNINDEXED, post_id UNINDEXED, title, body, "
        "tokenize = 'unicode61 remove_diacritics 2')"
    )

    db.create_table(
        "forum_projection_events",
        {"projection_name": str, "event_id": str, "applied_at": str},
        pk=("projection_name", "event_id"),
        not_null={"projection_name", "event_id", "applied_at"},
    )
    db.create_table(
        "forum_projection_checkpoints",
        {"projection_name": str, "last_sequence": int, "updated_at": str},
        pk="projection_name",
        not_null={"projection_name", "last_sequence", "updated_at"},
        defaults={"last_sequence": 0},
    )


def apply(db: sqlite_utils.Database) -> None:
    """Migration 1: create every forum table. Runs inside the migration's transaction."""
    _write_model(db)
    _log(db)
    _transport(db)
    _read_models(db)


# --- migration 12: search rows keyed by thread -------------------------------------------------

SEARCH_POST_BITS = 24  # a thread's posts take rowids key << 24 .. (key << 24) + 2**24 - 1
SEARCH_MAX_POSTS = (1 << SEARCH_POST_BITS) - 1  # posts of one thread after this many are not indexed

_CREATE_SEARCH = (
    "CREATE VIRTUAL TABLE {name} USING fts5("
    "thread_id UNINDEXED, post_id UNINDEXED, title, body, "
    "tokenize = 'unicode61 remove_diacritics 2')"
)


def apply_search_keys(db: sqlite_utils.Database) -> None:
    """Migration 12: ``forum_search`` rowids say which thread a row belongs to.

    ``forum_search_threads`` gives each thread with indexed posts an integer ``search_key``
    (the sequence of the event that indexed its first post, so a rebuild gives the same keys)
    and the n-th indexed post of a thread (from 1) gets the rowid ``(search_key << 24) + n``.
    A search then reads which threads match from the FTS doclists alone (``rowid >> 24``), and
    can ask whether one thread matches with a rowid range.  Existing rows are copied into the new
    table with those rowids (re-tokenising every post: about a minute per million posts, once).
    """
    db.execute(
        "CREATE TABLE forum_search_threads ("
        "search_key INTEGER PRIMARY KEY, thread_id TEXT NOT NULL UNIQUE)"
    )
    db.execute(
        "INSERT INTO forum_search_threads (search_key, thread_id)"
        " SELECT MIN(e.sequence), s.thread_id FROM (SELECT DISTINCT thread_id FROM forum_search) s"
        " JOIN forum_events e ON e.thread_id = s.thread_id GROUP BY s.thread_id"
    )
    db.execute(_CREATE_SEARCH.format(name="forum_search_keyed"))
    db.execute(
        "INSERT INTO forum_search_keyed (rowid, thread_id, post_id, title, body)"
        f" SELECT (k.search_key << {SEARCH_POST_BITS}) + n, thread_id, post_id, title, body FROM ("
        "  SELECT s.thread_id, s.post_id, s.title, s.body,"
        "  row_number() OVER (PARTITION BY s.thread_id ORDER BY s.rowid) AS n FROM forum_search s"
        f" ) JOIN forum_search_threads k USING (thread_id) WHERE n <= {SEARCH_MAX_POSTS}"
    )
    db.execute("DROP TABLE forum_search")
    db.execute("ALTER TABLE forum_search_keyed RENAME TO forum_search")


# --- migration 13: a contentless search index, partial queue/assignee indexes ------------------

# What migration 13 leaves: only the index, no copy of the text (``content=''``) and no per-row
# token counts (``columnsize=0``).  The text is in ``forum_posts`` (and the title in
# ``forum_threads``); the rowid says the thread (migration 12), so nothing else is stored.
_CREATE_CONTENTLESS_SEARCH = (
    "CREATE VIRTUAL TABLE {name} USING fts5("
    "title, body, content = '', columnsize = 0, "
    "tokenize = 'unicode61 remove_diacritics 2')"
)

# The partial indexes of migration 13: most threads have no assignee and need no answer, so
# these hold only the rows a filter can find.  A query uses one only when its WHERE holds the
# index's condition verbatim (``v.assignee_name <> ''`` is added by ThreadFilters.where,
# ``q.needs_answer = 1`` is the unanswered queue's own term).
UNANSWERED_INDEX = "ix_forum_thread_queue_view_unanswered"
ASSIGNED_INDEX = "ix_forum_thread_views_assigned"


def apply_contentless_search(db: sqlite_utils.Database) -> None:
    """Migration 13: ``forum_search`` keeps no text; two list indexes become partial.

    ``forum_search`` becomes ``fts5(title, body, content='', columnsize=0)``: the index alone,
    same rowids (migration 12), same matches.  Nothing reads a row back (searches read rowids
    and MATCH), and the old ``thread_id``/``post_id`` columns are said by the rowid.  It cannot
    be scanned or counted with ``SELECT``, a row cannot be deleted with ``DELETE`` (clearing it
    is ``INSERT INTO forum_search(forum_search) VALUES('delete-all')``), and a duplicate rowid is
    not refused.  Every existing row is copied into the new table (re-tokenising every post
    once, in the migration's transaction: about 13 µs a post measured, budget up to a minute per
    million posts as for migration 12); the old table's pages go to the free list, reused by
    later writes (the file shrinks only on ``VACUUM``).

    ``forum_thread_queue_view``'s ``(needs_answer, updated_at, thread_id)`` index becomes
    ``(updated_at, thread_id) WHERE needs_answer = 1`` and ``forum_thread_views``'s
    ``(assignee_name, updated_at, thread_id)`` one gets ``WHERE assignee_name <> ''``.
    """
    db.execute(_CREATE_CONTENTLESS_SEARCH.format(name="forum_search_contentless"))
    db.execute(
        "INSERT INTO forum_search_contentless (rowid, title, body)"
        " SELECT rowid, COALESCE(title, ''), COALESCE(body, '') FROM forum_search ORDER BY rowid"
    )
    db.execute("DROP TABLE forum_search")
    db.execute("ALTER TABLE forum_search_contentless RENAME TO forum_search")

    db.execute("DROP INDEX ix_forum_thread_queue_view_needs_answer_updated_at_thread_id")
    db.execute(
        f"CREATE INDEX {UNANSWERED_INDEX} ON forum_thread_queue_view (updated_at, thread_id)"
        " WHERE needs_answer = 1"
    )
    db.execute("DROP INDEX ix_forum_thread_views_assignee_name_updated_at_thread_id")
    db.execute(
        f"CREATE INDEX {ASSIGNED_INDEX} ON forum_thread_views (assignee_name, updated_at, thread_id)"
        " WHERE assignee_name <> ''"
    )


# The full list indexes of ``forum_thread_queue_view`` (migration 1) that migration 14 drops.
QUEUE_VIEW_LIST_INDEXES = (
    "ix_forum_thread_queue_view_updated_at_thread_id",
    "ix_forum_thread_queue_view_ticket_updated_at_thread_id",
    "ix_forum_thread_queue_view_run_id_updated_at_thread_id",
)


def apply_queue_view_indexes(db: sqlite_utils.Database) -> None:
    """Migration 14: ``forum_thread_queue_view`` keeps only its partial unanswered index.

    The unseen queue filters, pages and orders on ``forum_thread_views`` (its
    ``(updated_at, thread_id)``, ``(ticket, ...)`` and ``(run_id, ...)`` indexes, the ones the
    thread list walks) and joins the queue view per row by primary key, so the queue view's own
    full ``(updated_at, thread_id)``, ``(ticket, updated_at, thread_id)`` and
    ``(run_id, updated_at, thread_id)`` indexes, copies of those, are dropped (about 240 bytes a
    thread).  The unanswered queue still walks ``ix_forum_thread_queue_view_unanswered``
    (migration 13).  A new database gets them from migration 1 and loses them here, so new and
    upgraded databases end with the same indexes.  The freed pages go to the free list.
    """
    for name in QUEUE_VIEW_LIST_INDEXES:
        db.execute(f"DROP INDEX IF EXISTS {name}")
