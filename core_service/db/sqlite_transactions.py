"""Write transactions on a raw `sqlite3` connection in autocommit mode (`isolation_level=None`),
for the stores that write SQLite without SQLAlchemy on every request: the hold store
(`billing/hold_store_sqlite.py`) and the workers' rate-limit store
(`ratelimit/sqlite_store.py`).

`transaction` runs `work` between `BEGIN IMMEDIATE` (or after one the caller issued) and
`COMMIT`; if anything raises, nothing of it stays: a transaction still open (a failed COMMIT
may leave one) is rolled back, and the error is raised as it is. If not even the ROLLBACK
works, the connection is left inside its transaction, which the caller can see
(`in_transaction`) and answer by closing it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def transaction(
    db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], *, begun: bool = False
) -> T:
    if not begun:
        db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT may leave it open: nothing of it stays
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return result


def busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY
