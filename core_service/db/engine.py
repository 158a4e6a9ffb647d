"""Creating the database engines and bringing the schema up to date on start.

Two views of one pool: `engine` for writes (transactions; on SQLite, BEGIN IMMEDIATE takes the
write lock up front so a read-then-write transaction cannot be refused half-way), and
`reads(engine)` for reads (autocommit: no BEGIN, no ROLLBACK round trip, and on SQLite no
write lock, so a health check or a key lookup never queues behind a writer — WAL lets
readers run beside the one writer).

Behind PgBouncer in transaction mode (`pgbouncer=True`) no prepared statement may outlive its
transaction, so statements are not cached, names are unique, and reads run in transactions
too (an autocommit read would prepare on one server connection and execute on another).
"""

from __future__ import annotations

import pathlib
import re
import uuid
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core_service.db.sqlite_transactions import CACHE_PRAGMA

MIGRATIONS = pathlib.Path(__file__).parent / "migrations"
# Any constant: serialises concurrent `kyma serve` start-ups migrating one PostgreSQL database.
_MIGRATION_LOCK_ID = 0x4B594D41
_READS = "kyma_reads"


def create_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 10, pgbouncer: bool = False
) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy, not the driver, begins transactions (see _begin).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(CACHE_PRAGMA)
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Connection) -> None:
            if connection.get_execution_options().get(_READS):
                return  # a read: no transaction, no lock
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    connect_args: dict[str, Any] = {}
    if pgbouncer:
        connect_args = {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__kyma_{uuid.uuid4().hex}__",
        }
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args=connect_args,
    )
    return engine


def reads(engine: AsyncEngine, *, pgbouncer: bool = False) -> AsyncEngine:
    """The engine for reads (see the module docstring); writes must not go through it."""
    if pgbouncer:
        return engine
    if engine.dialect.name == "sqlite":
        return engine.execution_options(**{_READS: True})
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _upgrade(connection: Connection) -> None:
    # Imported here: alembic (with mako) is a large import that a start-up on a database
    # already up to date does without.
    from alembic import command
    from alembic.config import Config

    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _head() -> str | None:
    """The newest revision of the migrations, read from their `revision` and `down_revision`
    lines; None unless the history has exactly one head (alembic then decides)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        source = path.read_text()
        for name, into in (("revision", revisions), ("down_revision", parents)):
            found = re.search(rf'^{name} = "([^"]+)"', source, re.MULTILINE)
            if found:
                into.add(found.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def _current(engine: AsyncEngine) -> str | None:
    """The database's revision; None when it has none yet (a fresh database)."""
    try:
        async with reads(engine).connect() as connection:
            rows = (await connection.execute(text("SELECT version_num FROM alembic_version"))).all()
    except DBAPIError:
        return None
    return rows[0][0] if len(rows) == 1 else None


async def migrate(engine: AsyncEngine) -> None:
    """Apply every pending migration (idempotent; safe when several nodes start at once). A
    database already at the newest revision is only read."""
    head = _head()
    if head is not None and await _current(engine) == head:
        return
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
