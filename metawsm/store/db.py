"""The one place that opens SQLite connections and frames transactions.

Every connection in the daemon, the CLI and the tests comes from :func:`open_connection`,
so the rules below hold everywhere:

* WAL journal, so readers never block the single writer and vice versa;
* a 10 s busy timeout, so concurrent writers queue instead of failing with
  ``database is locked``;
* ``isolation_level=None``: Python's sqlite3 never opens transactions behind our back, we
  issue ``BEGIN`` ourselves through :func:`write_transaction` / :func:`read_transaction`;
* ``check_same_thread=True``: each actor owns its own connection, and a connection that
  leaks to another thread fails loudly instead of corrupting a transaction;
* ``foreign_keys=ON`` and ``synchronous=FULL`` (what ships; benchmarks may pass NORMAL);
* one **write gate** per database file and process: :func:`write_transaction` waits on a
  Python lock before ``BEGIN IMMEDIATE``, so the daemon's own writers (intake, relay,
  handler, four projections, ...) wake the moment the lock is free instead of meeting in
  SQLite's busy handler, which sleeps in steps of up to 25 ms (a wait of 1 + 2 + 5 + 10 ms
  for a lock that is free again after 0.3 ms).  Other processes (CLIs, tests) still
  meet the daemon in the busy handler, as before.

Nothing outside ``metawsm.store`` should call ``sqlite3.connect``: keeping the store behind
this module is what keeps a later move to PostgreSQL a change in one package.

This module deliberately does not import sqlite-utils (about a quarter of a second to
import); only migrations that actually have work to do pay for it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_DB_PATH = Path(".metawsm") / "metawsm.db"
BUSY_TIMEOUT_MS = 10_000
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
MEMORY = ":memory:"


class StoreError(Exception):
    """The database at ``path`` cannot be opened or used, for ``reason``.

    Raised instead of a bare ``sqlite3.Error`` so callers (CLI, ``serve``) can print one clear
    line naming the file, which is what an operator needs to fix it.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot open database {self.path}: {reason}")


class WriteGate:
    """A lock taken around every write transaction of one database file in this process.

    Re-entrant per thread, because SQLite itself would let one thread block on its own
    second connection: that keeps its old behaviour (the busy timeout, then ``database is
    locked``) rather than becoming a deadlock here.

    Deliberately *not* first-in-first-out: a strict hand-over to the oldest waiter makes
    every transaction wait for that thread to be scheduled and to get the GIL, a convoy
    that halved throughput in ``bench/throughput.py``.  A released lock goes to whichever
    waiter runs first, which keeps the writer that is already on a CPU writing.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()


_gates: dict[str, WriteGate] = {}
_gates_lock = threading.Lock()


def write_gate(path: str | Path) -> WriteGate:
    """The process-wide write gate of the database file at ``path``."""
    key = str(Path(path).resolve())
    with _gates_lock:
        gate = _gates.get(key)
        if gate is None:
            gate = _gates[key] = WriteGate()
        return gate


class StoreConnection(sqlite3.Connection):
    """A ``sqlite3.Connection`` that knows the write gate of its file (None: in-memory)."""

    write_gate: WriteGate | None = None


def _normalise_synchronous(synchronous: str) -> str:
    mode = synchronous.strip().upper()
    if mode not in SYNCHRONOUS_MODES:
        allowed = ", ".join(SYNCHRONOUS_MODES)
        raise ValueError(f"synchronous must be one of {allowed}, got {synchronous!r}")
    return mode


def _connect_file(path: Path, read_only: bool) -> sqlite3.Connection:
    if read_only:
        # A URI is the only way to ask SQLite for a read-only handle; as_uri() escapes
        # characters such as '?' and '#' that would otherwise end the file name.
        target = path.resolve().as_uri() + "?mode=ro"
        uri = True
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = str(path)
        uri = False
    conn = sqlite3.connect(
        target,
        uri=uri,
        isolation_level=None,
        check_same_thread=True,
        timeout=BUSY_TIMEOUT_MS / 1000,
        factory=StoreConnection,
    )
    if not read_only:
        conn.write_gate = write_gate(path)
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == sqlite3.SQLITE_BUSY)
    return "locked" in str(exc)


def _switch_to_wal(conn: sqlite3.Connection) -> str:
    """Put the file in WAL mode (persistent, so usually already done); return the mode.

    Reading the mode is also the first statement that touches the file header, so a file
    that is not a database fails here rather than at some later query. Switching a fresh
    file needs an exclusive lock and SQLite reports SQLITE_BUSY for it *without* calling
    the busy handler when several processes open the new file at once, so this step waits
    and retries by itself, within the same budget as the busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
            if mode in ("wal", "memory"):
                return mode
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _configure(conn: sqlite3.Connection, *, synchronous: str, read_only: bool, memory: bool) -> None:
    # busy_timeout first: switching to WAL may itself have to wait for another process.
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if not read_only:
        mode = _switch_to_wal(conn)
        expected = "memory" if memory else "wal"
        if mode != expected:
            raise sqlite3.OperationalError(f"WAL journal mode is not available (got {mode!r})")
    else:
        conn.execute("PRAGMA schema_version").fetchone()
        conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA synchronous = {synchronous}")


def open_connection(
    path: str | Path, *, synchronous: str = "FULL", read_only: bool = False
) -> sqlite3.Connection:
    """Open a connection configured by the store's rules (see the module docstring).

    Creates the parent directory for a writable database. ``read_only`` opens the file with
    ``mode=ro`` (it must exist) and sets ``query_only``; the journal mode is left as the
    writer set it. Raises :class:`StoreError` naming the path when the file cannot be opened
    or configured, and ``ValueError`` for an unknown ``synchronous`` mode.
    """
    mode = _normalise_synchronous(synchronous)
    memory = str(path) == MEMORY
    conn: sqlite3.Connection | None = None
    try:
        if memory:
            conn = sqlite3.connect(MEMORY, isolation_level=None, check_same_thread=True)
        else:
            conn = _connect_file(Path(path), read_only)
        _configure(conn, synchronous=mode, read_only=read_only, memory=memory)
    except (OSError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        raise StoreError(path, str(exc) or type(exc).__name__) from exc
    conn.row_factory = sqlite3.Row
    return conn


def _rollback_quietly(conn: sqlite3.Connection, original: BaseException) -> None:
    """Roll back without letting a failing ROLLBACK hide the error that caused it."""
    if not conn.in_transaction:
        return  # SQLite already rolled back (e.g. SQLITE_FULL, or an interrupted statement)
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as rollback_error:
        original.add_note(f"rollback also failed: {rollback_error}")


def _refuse_nesting(conn: sqlite3.Connection, what: str) -> None:
    if conn.in_transaction:
        raise RuntimeError(
            f"{what} cannot start: this connection already has an open transaction "
            "(transactions are not nested; pass the connection down instead)"
        )


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; ``ROLLBACK`` and re-raise on any exception.

    The connection's process-wide write gate is taken first (same 10 s budget as the
    busy timeout), then IMMEDIATE takes SQLite's write lock
    up front, where the busy timeout applies. A deferred
    transaction that reads first and writes later can instead fail at once with
    ``database is locked`` (SQLITE_BUSY_SNAPSHOT) when another writer committed in between,
    and no timeout helps. ``BaseException`` is included so that a KeyboardInterrupt or an
    actor being torn down never leaves a half-done transaction on the connection.
    """
    _refuse_nesting(conn, "write_transaction")
    gate: WriteGate | None = getattr(conn, "write_gate", None)
    if gate is not None and not gate.acquire(BUSY_TIMEOUT_MS / 1000):
        # What SQLite's busy handler would have said after the same wait.
        raise sqlite3.OperationalError("database is locked")
    try:
        yield from _transaction(conn, "BEGIN IMMEDIATE")
    finally:
        if gate is not None:
            gate.release()


@contextmanager
def read_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A deferred ``BEGIN`` so several SELECTs see one consistent snapshot.

    The snapshot is fixed by the first SELECT inside the block, not by ``BEGIN`` itself.
    Do not write inside it: use :func:`write_transaction` for that.
    """
    _refuse_nesting(conn, "read_transaction")
    yield from _transaction(conn, "BEGIN")


def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[sqlite3.Connection]:
    """The body both context managers share: ``begin``, yield, COMMIT; ROLLBACK on any exception."""
    conn.execute(begin)
    try:
        yield conn
    except BaseException as exc:
        _rollback_quietly(conn, exc)
        raise
    try:
        conn.execute("COMMIT")
    except BaseException as exc:
        _rollback_quietly(conn, exc)
        raise


class Database:
    """Where the database lives and how to open it; cheap to copy between actors.

    It holds no connection itself: each actor calls :meth:`connect` on its own thread and
    keeps the result, because connections are bound to the thread that opened them.
    """

    __slots__ = ("path", "synchronous")

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path: Path = Path(path)
        self.synchronous: str = _normalise_synchronous(synchronous)

    def __repr__(self) -> str:
        return f"Database(path={str(self.path)!r}, synchronous={self.synchronous!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Database):
            return NotImplemented
        return (self.path, self.synchronous) == (other.path, other.synchronous)

    def __hash__(self) -> int:
        return hash((self.path, self.synchronous))

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        """A new connection owned by the calling thread."""
        return open_connection(self.path, synchronous=self.synchronous, read_only=read_only)

    def migrate(self) -> list[int]:
        """Bring the schema up to date on a short-lived connection; return applied versions."""
        from metawsm.store.migrations import migrate  # migrations imports this module

        conn = self.connect()
        try:
            return migrate(conn)
        finally:
            conn.close()
