"""Full-text search over threads (their titles and post bodies), keyset-paginated.

A thread matches when every whitespace-separated term of the query occurs somewhere in it,
case- and accent-insensitively (FTS5 ``unicode61`` on ``forum_search``).  Each term goes to
FTS5 as a quoted string, so FTS syntax in user input (``"``, ``*``, ``-``, ``OR``, ``NEAR``,
``col:``) is matched as text, never interpreted; the only syntax kept is a trailing ``*`` on
a term, meaning "words starting with".  A term without any letter or digit is ignored; a
query with none at all finds nothing.  Results read only the ``thread_views`` read model, in
list order (newest ``updated_at`` first, ``thread_id`` descending), with the list's keyset cursor.
``forum_search`` is contentless (migration 13): only its rowids and MATCH are read, never a column.
"""

from __future__ import annotations

import json
import sqlite3
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from metawsm.forum.reads import flags
from metawsm.forum.reads.db import rows, snapshot
from metawsm.forum.reads.filters import DEFAULT_LIMIT, ThreadFilters, Viewer, invalid_filter, parse_limit
from metawsm.forum.reads.paging import after_cursor, page
from metawsm.forum.views import ThreadView
from metawsm.store.schema_forum import SEARCH_MAX_POSTS, SEARCH_POST_BITS

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
    for i, term in enumerate(terms):
        params[f"term_{i}"] = term
    flags.bind(viewer, params)
    with snapshot(conn):
        found = None
        common = _common(conn, terms)
        if all(common):
            found = _walk(conn, list(range(len(terms))), where, params, count + 1, viewer, budget=WALK_BUDGET)
        if found is None:
            found = _all_matches(conn, common, where, params, count + 1, viewer)
    return page(found, count, viewer is not None)


# How a page is found (docs/forum.md#search).  Both ways give the same rows in the same order.
#
# * Walk: the threads in list order (the filters, after the cursor), a window at a time, each
#   asked whether it matches with a rowid range of ``forum_search`` (its posts); stops when the
#   page is full.  Cheap when most threads match, whatever the history: a window of the page's
#   size usually fills it.  Used when every term is a whole word found in at least COMMON posts,
#   and given up (for the other way) after WALK_BUDGET threads without filling the page.
# * All matches: which threads the rare terms (and prefixes) match, from the FTS doclists alone
#   (``rowid >> 24``, no row read), then those threads in list order; the common words among the
#   terms are asked per thread while walking them, stopping when the page is full.  Costs what
#   the rare terms match.  The only way for prefixes (a prefix probed per thread expands the
#   prefix every time), so a prefix most posts match costs what it matches (seconds at 1M).
COMMON = 2_000
WALK_BUDGET = 1_024


def _common(conn: sqlite3.Connection, terms: list[str]) -> list[bool]:
    """Per term: a whole word found in at least COMMON posts (a prefix never counts as common)."""
    common = []
    for term in terms:
        if term.endswith("*"):
            common.append(False)
            continue
        row = conn.execute(
            "SELECT count(*) FROM (SELECT rowid FROM forum_search WHERE forum_search MATCH ? LIMIT ?)",
            (term, COMMON),
        ).fetchone()
        common.append(int(row[0]) >= COMMON)
    return common


def _probes(indexes: Iterable[int]) -> list[str]:
    span = f"(k.search_key << {SEARCH_POST_BITS})"
    return [
        f"EXISTS (SELECT 1 FROM forum_search s WHERE s.forum_search MATCH :term_{i}"
        f" AND s.rowid BETWEEN {span} AND {span} + {SEARCH_MAX_POSTS})"
        for i in indexes
    ]


def _select(viewer: Viewer | None, join: str = "JOIN") -> str:
    return (
        f"SELECT v.*, v.updated_at AS cursor_updated_at, v.thread_id AS cursor_thread_id,"
        f" {flags.columns('v', viewer)}"
        f" FROM forum_thread_views v {join} forum_search_threads k ON k.thread_id = v.thread_id"
        f"{flags.joins('v', viewer)}"
    )


def _walk(
    conn: sqlite3.Connection, asked: list[int], where: list[str], params: dict[str, Any], want: int,
    viewer: Viewer | None, hits: str = "", budget: int | None = None,
) -> list[sqlite3.Row] | None:
    """The first ``want`` threads in list order that hold the ``asked`` terms (and are among
    ``hits`` when given), or None when ``budget`` threads were walked without finding them."""
    found: list[sqlite3.Row] = []
    window = want  # the first window is the page (plus one); then four times larger each time
    walked = 0
    bounds: list[str] = []
    local = dict(params)
    among = ["k.search_key IN (SELECT search_key FROM hits)"] if hits else []
    prefix = f"WITH hits(search_key) AS ({hits}) " if hits else ""
    # without hits, the list's index in order (CROSS JOIN keeps SQLite from scanning the keys
    # instead); with them, SQLite starts from the few hit keys
    join = "JOIN" if hits else "CROSS JOIN"
    while True:
        local["window"] = window
        candidates = conn.execute(
            f"{prefix}SELECT v.updated_at, v.thread_id, k.search_key"
            f" FROM forum_thread_views v {join} forum_search_threads k ON k.thread_id = v.thread_id"
            f" WHERE {' AND '.join(among + where + bounds) or '1'}"
            " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :window",
            local,
        ).fetchall()
        if not candidates:
            return found
        local["walk_last_updated_at"], local["walk_last_thread_id"] = candidates[-1][0], candidates[-1][1]
        local["want"] = want - len(found)
        if hits:  # the window's few hit threads by key: each asked once, whatever plan SQLite picks
            local["walk_keys"] = json.dumps([c[2] for c in candidates])
            window_only = ["k.search_key IN (SELECT value FROM json_each(:walk_keys))"]
        else:  # the list's index in order over the window, stopping once the page is full
            upto = "(v.updated_at, v.thread_id) >= (:walk_last_updated_at, :walk_last_thread_id)"
            window_only = where + bounds + [upto]
        found += rows(
            conn,
            f"{_select(viewer, join)} WHERE {' AND '.join(window_only + _probes(asked))}"
            " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :want",
            local,
        )
        walked += len(candidates)
        if len(found) >= want or len(candidates) < window:
            return found
        if budget is not None and walked >= budget:
            return None
        local["walk_after_updated_at"] = local["walk_last_updated_at"]
        local["walk_after_thread_id"] = local["walk_last_thread_id"]
        bounds = ["(v.updated_at, v.thread_id) < (:walk_after_updated_at, :walk_after_thread_id)"]
        window *= 4
        if budget is not None:
            window = min(window, budget - walked)  # never more than the budget in all


def _all_matches(
    conn: sqlite3.Connection, common: list[bool], where: list[str], params: dict[str, Any], want: int,
    viewer: Viewer | None,
) -> list[sqlite3.Row]:
    """Threads the rare terms match, in list order; the common words are asked per thread, walking."""
    rare = [i for i, is_common in enumerate(common) if not is_common]
    asked = [i for i, is_common in enumerate(common) if is_common]
    if not rare:  # a walk given up: every term is common
        rare, asked = asked, []
    hits = " INTERSECT ".join(
        f"SELECT rowid >> {SEARCH_POST_BITS} FROM forum_search WHERE forum_search MATCH :term_{i}" for i in rare
    )
    if asked:
        found = _walk(conn, asked, where, params, want, viewer, hits=hits)
        assert found is not None  # no budget: it walks to the end
        return found
    sql = (
        f"WITH hits(search_key) AS ({hits})"
        f" {_select(viewer)} WHERE {' AND '.join(['k.search_key IN (SELECT search_key FROM hits)'] + where)}"
        " ORDER BY v.updated_at DESC, v.thread_id DESC LIMIT :want"
    )
    return rows(conn, sql, {**params, "want": want})
