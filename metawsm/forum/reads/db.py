"""How a read runs on the caller's connection: all rows, one row, or several in one snapshot.

The caller owns the connection (opens it, keeps it on its thread, closes it).  Rows come back
as :class:`sqlite3.Row` whatever the connection's ``row_factory``.  :func:`snapshot` runs
statements that must agree in one read transaction, or inside the caller's own transaction
when one is already open on the connection (transactions do not nest).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from metawsm.store.db import read_transaction

Params = Sequence[Any] | Mapping[str, Any]


def rows(conn: sqlite3.Connection, sql: str, params: Params = ()) -> list[sqlite3.Row]:
    cur = conn.cursor()
    cur.row_factory = sqlite3.Row
    try:
        return cur.execute(sql, params).fetchall()
    finally:
        cur.close()


def one(conn: sqlite3.Connection, sql: str, params: Params = ()) -> sqlite3.Row | None:
    found = rows(conn, sql, params)
    return found[0] if found else None


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    if conn.in_transaction:
        yield
        return
    with read_transaction(conn):
        yield
