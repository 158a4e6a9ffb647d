"""Raw `sqlite3` connections in autocommit mode (`isolation_level=None`) and write transactions
on them, for the stores that write SQLite without SQLAlchemy on every request: the hold store
(`billing/hold_store_sqlite.py`) and the workers' rate-limit store
(`ratelimit/sqlite_store.py`).

`open_wal` opens such a connection in WAL mode. Putting a file that is not yet in WAL mode (a
new one, every worker starting at once on it) into WAL mode while another connection is in a
transaction on it is refused at once, busy timeout or not (SQLite's deadlock avoidance): with
a timeout (a store's thread) it is tried again until the timeout; without one (the event
loop's connection, which never waits) it is not.

`transaction` runs `work` between `BEGIN IMMEDIATE` (or after one the caller issued) and
`COMMIT`; if anything raises, nothing of it stays: a transaction still open (a failed COMMIT
may leave one) is rolled back, and the error is raised as it is. If not even the ROLLBACK
works, the connection is left inside its transaction, which the caller can see
(`in_transaction`) and answer by closing it.
"""

from __future__ import annotations

import contextlib
import pathlib
import sqlite3
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Pause between tries to put a file into WAL mode while another connection holds its lock.
_WAL_RETRY_S = 0.01
# Every SQLite connection of a core keeps at most this many KiB of pages (SQLite's default is
# 2,000 KiB each). A core holds a dozen connections (the engine's pool, the hold store's two,
# the limiter's), and in WAL mode a connection's cache is emptied whenever another connection
# has written since its last transaction, which on a serving core is nearly always: a larger
# cache buys little but memory.
CACHE_PRAGMA = "PRAGMA cache_size=-512"


def open_wal(path: pathlib.Path, *, timeout: float, synchronous: str) -> sqlite3.Connection:
    """A connection to `path` in WAL mode with `synchronous` set, waiting up to `timeout` for
    the lock (see the module)."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as error:
                if not busy(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(_WAL_RETRY_S)
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(CACHE_PRAGMA)
    except BaseException:
        db.close()
        raise
    return db


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
