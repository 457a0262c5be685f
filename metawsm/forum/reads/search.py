"""Full-text search over threads (their titles and post bodies), keyset-paginated.

A thread matches when every whitespace-separated term of the query occurs somewhere in it,
case- and accent-insensitively (FTS5 ``unicode61`` on ``forum_search``).  Each term goes to
FTS5 as a quoted string, so FTS syntax in user input (``"``, ``*``, ``-``, ``OR``, ``NEAR``,
``col:``) is matched as text, never interpreted; the only syntax kept is a trailing ``*`` on
a term, meaning "words starting with".  A term without any letter or digit is ignored; a
query with none at all finds nothing.  Results read only the ``thread_views`` read model.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Mapping
from typing import Any

from metawsm.forum.reads import flags
from metawsm.forum.reads.db import rows, snapshot
from metawsm.forum.reads.filters import DEFAULT_LIMIT, ThreadFilters, Viewer, invalid_filter, parse_limit
from metawsm.forum.reads.paging import after_cursor, page
from metawsm.forum.views import ThreadView

MAX_SEARCH_TERMS = 32


def search_terms(query: str) -> list[str]:
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


def search(
    conn: sqlite3.Connection,
    query: Any,
    filters: ThreadFilters | Mapping[str, Any] | None = None,
    cursor: str | None = None,
    limit: Any = DEFAULT_LIMIT,
    viewer: Viewer | None = None,
) -> tuple[list[ThreadView], str | None]:
    """Threads whose title or posts contain every term of ``query``: a page and the next cursor."""
    if not isinstance(query, str) or not query.strip():
        raise invalid_filter("query is required")
    parsed = ThreadFilters.parse(filters)
    count = parse_limit(limit, DEFAULT_LIMIT)
    terms = search_terms(query)
    if len(terms) > MAX_SEARCH_TERMS:
        raise invalid_filter(f"query has too many terms (at most {MAX_SEARCH_TERMS})")
    params: dict[str, Any] = {"limit": count + 1}
    where = parsed.where("v", params) + after_cursor("v", cursor, params)
    if not terms:
        return [], None
    hits = []
    for i, term in enumerate(terms):
        params[f"term_{i}"] = term
        hits.append(f"SELECT thread_id FROM forum_search WHERE forum_search MATCH :term_{i}")
    flags.bind(viewer, params)
    where.insert(0, "v.thread_id IN (SELECT thread_id FROM hits)")
    sql = (
        f"WITH hits(thread_id) AS ({' INTERSECT '.join(hits)})"
        f" SELECT v.*, v.updated_at AS cursor_updated_at, v.thread_id AS cursor_thread_id,"
        f" {flags.columns('v', viewer)}"
        f" FROM forum_thread_views v{flags.joins('v', viewer)} WHERE {' AND '.join(where)}"
        " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :limit"
    )
    with snapshot(conn):
        found = rows(conn, sql, params)
    return page(found, count, viewer is not None)
