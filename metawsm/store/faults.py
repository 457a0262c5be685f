"""Persistent write errors: a full disk, an I/O error, a read-only file system.

Such an error is not a bug of the actor that met it, and it does not go away by itself in
milliseconds: a write that failed with ``SQLITE_FULL`` fails again until someone frees space.
Letting the actor crash only loops (each restart meets the same error, the supervisors give up,
and a restarted relay republishes what it could not mark sent).  So the writers classify the
error with :func:`classify`, report it to the daemon's one :class:`StorageStatus`, refuse or
postpone their work while it is set, and the status is cleared by a probe write once the
database can be written again (the forum relay probes; see docs/store.md).

The status is shared by many actor threads and read by ``/api/v1/health``: one lock guards its
changes, and readers take the ``fault`` attribute as one atomic read.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

import msgspec

from metawsm.clock import now_text

log = logging.getLogger("metawsm.store")

# Primary result codes (the low byte of an extended code) that mean "this file cannot be written
# now" rather than "this statement is wrong".  SQLITE_BUSY is not one: a lock passes by itself.
_FULL = sqlite3.SQLITE_FULL
_IOERR = sqlite3.SQLITE_IOERR
_READONLY = sqlite3.SQLITE_READONLY
_OS_FULL = (errno.ENOSPC, errno.EDQUOT)
_OS_IO = (errno.EIO, errno.EROFS)

# A full disk is declared writable again only with this much free (a probe write alone can
# succeed in space SQLite already holds, and the next real write would fail again at once).
MIN_FREE_BYTES = 1 << 20

DISK_FULL = "disk full"
IO_ERROR = "disk I/O error"
READ_ONLY = "database read-only"


class StorageFault(msgspec.Struct, frozen=True, kw_only=True):
    """Why the database cannot be written: ``kind`` at ``path``, SQLite's or the OS's ``error``."""

    kind: str  # DISK_FULL | IO_ERROR | READ_ONLY
    path: str
    error: str
    since: str

    @property
    def reason(self) -> str:
        """One line for health and for the 503 of a refused write: ``disk full: <path>``."""
        return f"{self.kind}: {self.path}"


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this process on the file system holding ``path`` (None when unknown).

    root may use the blocks a file system reserves for it, so it counts them.
    """
    try:
        stat = os.statvfs(path)
    except FileNotFoundError:
        try:
            stat = os.statvfs(Path(path).parent)
        except OSError:
            return None
    except OSError:
        return None
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    return int(blocks * stat.f_frsize)


def classify(error: BaseException, path: str | Path) -> StorageFault | None:
    """The fault ``error`` means for the database at ``path``, or None when it is not one."""
    kind: str | None = None
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(error).lower()
        if primary == _FULL or "database or disk is full" in text:
            kind = DISK_FULL
        elif primary == _IOERR or "disk i/o error" in text:
            # SQLite reports some ENOSPC cases (growing the WAL index, say) as I/O errors.
            free = free_bytes(path)
            kind = DISK_FULL if free is not None and free < MIN_FREE_BYTES else IO_ERROR
        elif primary == _READONLY or "readonly database" in text:
            kind = READ_ONLY
    elif isinstance(error, OSError):
        if error.errno in _OS_FULL:
            kind = DISK_FULL
        elif error.errno in _OS_IO:
            kind = IO_ERROR
    if kind is None:
        return None
    return StorageFault(kind=kind, path=str(Path(path).resolve()), error=str(error) or type(error).__name__,
                        since=now_text())


class StorageStatus:
    """The daemon's one view of whether its database can be written.

    Set by any writer that meets a persistent write error (:meth:`report`), cleared only by a
    successful probe (:meth:`clear`), so writers do not each hammer a full disk.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fault: StorageFault | None = None
        self.faults_total = 0
        self._lock = threading.Lock()

    def report(self, error: BaseException) -> StorageFault | None:
        """Record ``error`` if it is a persistent write error; return the current fault or None.

        None means the error is something else: the caller handles (or raises) it as before.
        """
        fault = classify(error, self.path)
        if fault is None:
            return None
        with self._lock:
            if self.fault is None:
                self.fault = fault
                self.faults_total += 1
                log.error("database cannot be written (%s: %s); writes are refused until it can, "
                          "and resume by themselves", fault.reason, fault.error)
            return self.fault

    def ready_to_probe(self) -> bool:
        """False while a full disk still has too little free space to be worth a probe write."""
        fault = self.fault
        if fault is None or fault.kind != DISK_FULL:
            return True
        free = free_bytes(self.path)
        return free is None or free >= MIN_FREE_BYTES

    def clear(self) -> StorageFault | None:
        """A probe wrote: the fault is over.  Returns the fault it cleared, if any."""
        with self._lock:
            fault, self.fault = self.fault, None
        if fault is not None:
            log.warning("database can be written again (%s since %s); writes resume", fault.reason, fault.since)
        return fault
