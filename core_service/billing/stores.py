"""Choosing the hold store for the configured database."""

from __future__ import annotations

import pathlib

from sqlalchemy.engine import make_url

from core_service.billing.hold_store import HoldStore
from core_service.billing.hold_store_sqlite import SqliteHoldStore


def open_hold_store(sqlalchemy_url: str, *, pgbouncer: bool = False) -> HoldStore:
    """The store of the writer; it connects on its first batch."""
    url = make_url(sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("Kyma's SQLite database must be a file (holds are shared through it)")
        return SqliteHoldStore(pathlib.Path(url.database))
    if url.get_backend_name() == "postgresql":
        # Imported here: asyncpg is about 3 MB of a core on the embedded default that never uses it.
        from core_service.billing.hold_store_postgres import PostgresHoldStore

        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresHoldStore(dsn, pgbouncer=pgbouncer)
    raise ValueError(f"unsupported database {url.get_backend_name()!r}: use SQLite or PostgreSQL")
