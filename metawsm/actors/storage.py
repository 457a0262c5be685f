"""How actors answer while the database cannot be written (metawsm/store/faults.py).

Shared by the forum pipeline: the intake refuses with :func:`unavailable` (HTTP 503 with the
reason), workers answer a delivery with :func:`retry_error` and :data:`RETRY_SECONDS` so the
consumer tries again later without counting an attempt (nothing is ever parked or skipped for
a full disk).
"""

from __future__ import annotations

from metawsm.actors.errors import StorageUnavailable
from metawsm.store.faults import StorageFault

# How long a worker asks the consumer to wait before delivering again while the database cannot
# be written: the relay probes once a second, so a resumed disk costs at most about that much.
RETRY_SECONDS = 0.5


def unavailable(fault: StorageFault) -> StorageUnavailable:
    return StorageUnavailable(
        f"{fault.reason} ({fault.error}); nothing was written. Writes are refused until the database can be "
        "written again, then resume by themselves; retrying later is safe"
    )


def retry_error(fault: StorageFault) -> str:
    """A delivery error that retries without counting an attempt (the ``retry:`` prefix)."""
    return f"retry: {fault.reason}"
