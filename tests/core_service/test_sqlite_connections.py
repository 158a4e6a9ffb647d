"""Every SQLite connection a core opens keeps a small page cache (core_service/db/
sqlite_transactions.py, CACHE_PRAGMA): the engine's pooled connections and the raw ones of the
hold store and the workers' limiter alike."""

from __future__ import annotations

import pathlib

from sqlalchemy import text

from core_service.db.engine import create_engine
from core_service.db.sqlite_transactions import CACHE_PRAGMA, open_wal

SMALL = int(CACHE_PRAGMA.rsplit("=", 1)[1])


def test_the_raw_connections_keep_a_small_cache(tmp_path: pathlib.Path) -> None:
    db = open_wal(tmp_path / "k.db", timeout=0, synchronous="NORMAL")
    try:
        assert db.execute("PRAGMA cache_size").fetchone()[0] == SMALL < 0  # KiB, not pages
    finally:
        db.close()


async def test_the_engines_connections_keep_a_small_cache(tmp_path: pathlib.Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        async with engine.connect() as connection:
            size = (await connection.execute(text("PRAGMA cache_size"))).scalar_one()
        assert size == SMALL
    finally:
        await engine.dispose()
