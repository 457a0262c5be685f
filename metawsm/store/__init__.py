"""SQLite store: connections, transactions, schema and migrations.

The rest of the program reaches the database only through this package, so the storage
engine can change (to PostgreSQL, say) without touching the actors.
Importing it is cheap: sqlite-utils is loaded only when a migration actually runs.
"""

from metawsm.store.db import (
    BUSY_TIMEOUT_MS,
    DEFAULT_DB_PATH,
    Database,
    StoreError,
    open_connection,
    read_transaction,
    write_transaction,
)
from metawsm.store.migrations import MIGRATIONS, Migration, current_version, migrate

__all__ = [
    "BUSY_TIMEOUT_MS",
    "DEFAULT_DB_PATH",
    "MIGRATIONS",
    "Database",
    "Migration",
    "StoreError",
    "current_version",
    "migrate",
    "open_connection",
    "read_transaction",
    "write_transaction",
]
