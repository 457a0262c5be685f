"""One daemon per database: an exclusive OS lock on a file beside the database.

Why: SQLite's own locking serialises transactions, not daemons.  Two ``metawsm serve`` on
one database both run the relay, the consumer and every projection, so events are applied
twice, the read models drift for good, both fight over the Redis namespace claim and both
re-attach to the same tmux sessions.  So ``serve`` takes ``flock(LOCK_EX | LOCK_NB)`` on
``<db>.lock`` (the database's resolved path plus ``.lock``) before it opens SQLite, Redis
or tmux, and holds it for its whole life; a second ``serve`` is refused at once with one
line naming the database and the holder.

Why ``flock`` on an open file: the kernel drops the lock when the holder's last descriptor
closes, which includes every kind of death (``kill -9`` too), so a restart after a crash
never meets a stale lock and nothing has to guess whether a pid is still alive.  The
descriptor is close-on-exec, so a tmux or redis-server the daemon starts never inherits it
and never keeps the lock alive after the daemon is gone.  The file itself is never deleted
(deleting it would let a newcomer lock a fresh inode while the holder still holds the old
one); its content, the holder's pid and address, is only believed while someone holds the
lock and that pid is alive.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

import msgspec

from metawsm.clock import now_text
from metawsm.waiting import wait_until

LOCK_SUFFIX = ".lock"
# How long a newcomer that finds the lock taken keeps looking: for the holder's record (a
# holder that locked a moment ago may not have written it yet) and for the lock coming free
# (a mere probe, see refuse_if_in_use, holds it for an instant).
CONTENTION_WAIT_SECONDS = 0.5


class LockHolder(msgspec.Struct, frozen=True):
    """What the lock file says about the daemon holding it."""

    pid: int
    address: str  # the URL its API answers on, e.g. http://127.0.0.1:3001
    db_path: str
    started_at: str


class DatabaseLockError(Exception):
    """The lock could not be taken; the message is the one line to show the operator."""


class DatabaseInUse(DatabaseLockError):
    """Another live process holds the database's lock."""

    def __init__(self, db_path: Path, holder: LockHolder | None) -> None:
        who = f"pid {holder.pid}, {holder.address}" if holder is not None else "pid unknown"
        super().__init__(f"database {db_path} is in use by metawsm serve ({who})")
        self.db_path = db_path
        self.holder = holder


def lock_path_for(db_path: str | os.PathLike[str]) -> Path:
    """``<db>.lock`` beside the database, symlinks resolved: two spellings of one database
    (a relative path, a symlinked directory) must find the same lock file."""
    resolved = Path(db_path).resolve()
    return resolved.with_name(resolved.name + LOCK_SUFFIX)


class DatabaseLock:
    """The held lock of one database; :meth:`release` (or the process's death) gives it up."""

    def __init__(self, db_path: Path, path: Path, fd: int, holder: LockHolder) -> None:
        self.db_path = db_path
        self.path = path
        self.holder = holder
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, db_path: str | os.PathLike[str], address: str) -> DatabaseLock:
        """Lock the database for this process and write our record into the lock file.

        Raises :class:`DatabaseInUse` (within :data:`CONTENTION_WAIT_SECONDS`) when another
        process holds it, :class:`DatabaseLockError` when the lock file cannot be used.
        """
        resolved = Path(db_path).resolve()
        path = lock_path_for(resolved)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise _unusable(resolved, path, error) from error
        try:
            _lock_or_raise(fd, fcntl.LOCK_EX, resolved, path)
            holder = LockHolder(pid=os.getpid(), address=address, db_path=str(resolved), started_at=now_text())
            os.ftruncate(fd, 0)
            os.pwrite(fd, msgspec.json.encode(holder) + b"\n", 0)
        except OSError as error:
            os.close(fd)  # releases the lock, if we had it
            raise _unusable(resolved, path, error) from error
        except BaseException:
            os.close(fd)
            raise
        return cls(resolved, path, fd, holder)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the lock up; idempotent.  The record is cleared first, while still held, so
        the file never names a process that no longer holds it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the record is ignored anyway once nobody holds the lock
        os.close(fd)

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def refuse_if_in_use(db_path: str | os.PathLike[str]) -> None:
    """Raise :class:`DatabaseInUse` if a live process holds the database's lock, creating
    nothing.  ``serve`` calls it before its slow imports so a second daemon is refused at
    once; the lock itself is taken later by :meth:`DatabaseLock.acquire`, which also covers
    a daemon that starts in between.  The probe holds a shared lock for an instant, which is
    why ``acquire`` retries for a moment before it refuses."""
    resolved = Path(db_path).resolve()
    path = lock_path_for(resolved)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file (nobody ever served this database) or unreadable: acquire() says why
    try:
        _lock_or_raise(fd, fcntl.LOCK_SH, resolved, path)
    except OSError:
        pass  # acquire() reports what is wrong with the file
    finally:
        os.close(fd)  # drops the shared lock, if we got it


def read_holder(fd: int) -> LockHolder | None:
    """The record in the lock file (None while empty or half written)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, max(size, 1), 0)
    except OSError:
        return None
    if not data.strip():
        return None
    try:
        return msgspec.json.decode(data, type=LockHolder)
    except msgspec.DecodeError:
        return None


def _lock_or_raise(fd: int, mode: int, db_path: Path, path: Path) -> None:
    """Take ``mode`` without blocking, or raise :class:`DatabaseInUse` naming the holder.

    While the lock is taken, wait a moment for either of two things: the lock coming free
    (its holder was only a probe) or the record of a live holder (one that just locked may
    not have written it yet, and until then the file may still name a holder killed -9).
    """

    # What each attempt found: True (locked), a live holder, or None (look again).
    def attempt() -> bool | LockHolder | None:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            holder = read_holder(fd)
            return holder if holder is not None and _alive(holder.pid) else None

    try:
        found = wait_until(attempt, timeout=CONTENTION_WAIT_SECONDS, interval=0.02, message=f"lock {path}")
    except TimeoutError:
        found = None
    if found is not True:
        raise DatabaseInUse(db_path, found or None)


def _unusable(db_path: Path, path: Path, error: OSError) -> DatabaseLockError:
    return DatabaseLockError(f"cannot lock database {db_path}: {path}: {(error.strerror or str(error)).lower()}")


def _alive(pid: int) -> bool:
    if pid <= 0:  # 0 and negatives would name process groups, not a process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; another user owns it
    return True
