"""Telling "the database is unreachable right now" (retry later; answer 503) apart from every
other database error (a bug or bad data; retrying will not help).

asyncpg is looked up, not imported: a core on SQLite never loads it (about 3 MB), and an error
can only be asyncpg's once something has imported asyncpg."""

from __future__ import annotations

import sqlite3
import sys
from types import ModuleType

from sqlalchemy import exc as sa_exc

# PostgreSQL's class 08 (connection exception) and 57P0x (shutting down, cannot connect now),
# 53300 (too many connections).
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def _asyncpg() -> ModuleType | None:
    return sys.modules.get("asyncpg")


def _unavailable_one(error: BaseException) -> bool:
    if isinstance(error, (OSError, TimeoutError, ConnectionError)):
        return True
    asyncpg = _asyncpg()
    if asyncpg is not None and isinstance(
        error,
        (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InternalClientError),
    ):
        # InternalClientError: a connection whose server died while it was idle.
        return True
    if asyncpg is not None and isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", "") or ""
        return state.startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(error, sqlite3.OperationalError):
        text = str(error)
        return "locked" in text or "unable to open" in text or "disk I/O" in text
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, (sa_exc.TimeoutError, sa_exc.DisconnectionError))


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and what it wraps (a driver's error inside SQLAlchemy's, a cause, a context),
    outermost first, at most six deep."""
    chain: list[BaseException] = []
    seen: BaseException | None = error
    while seen is not None and len(chain) < 6:
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return chain


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` (or what it wraps) says the database could not be reached or used."""
    return any(_unavailable_one(seen) for seen in _chain(error))


def configuration_hint(error: BaseException) -> str | None:
    """What to change when `error` says the deployment is misconfigured, if it says so."""
    asyncpg = _asyncpg()
    if asyncpg is None:
        return None
    for seen in _chain(error):
        if isinstance(
            seen,
            (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError),
        ):
            return (
                "prepared statements go missing between transactions: is PostgreSQL behind "
                "PgBouncer in transaction mode? Then set KYMA_DATABASE_PGBOUNCER=true"
            )
    return None


def startup_problem(error: BaseException) -> str | None:
    """What kept the database from being used at start-up, in words for the operator, when
    `error` says it is the database's side: unreachable (or, on SQLite, a file that cannot be
    opened), or refused by the server (authentication, a database that does not exist). None
    for anything else: that is a fault whose traceback is wanted."""
    chain = _chain(error)
    if is_unavailable(error):
        return f"cannot be reached: {chain[-1]}"
    asyncpg = _asyncpg()
    if asyncpg is not None:
        for seen in chain:
            if isinstance(seen, asyncpg.PostgresError):
                return f"refused the connection: {seen}"
    return None
