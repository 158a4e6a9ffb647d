"""Start-up on a database already at the newest migration reads its revision and applies
nothing (alembic is not needed); behind it, or fresh, the migrations run as before."""

from __future__ import annotations

import pathlib

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text

from core_service.db import engine as db_engine
from core_service.db.engine import MIGRATIONS, create_engine, migrate


def test_the_head_read_from_the_files_is_alembics() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert db_engine._head() == ScriptDirectory.from_config(config).get_current_head()


async def test_a_database_at_the_head_is_left_alone(tmp_path: pathlib.Path, monkeypatch) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'k.db'}")
    try:
        assert await db_engine._current(engine) is None  # fresh: no revision table yet
        await migrate(engine)
        assert await db_engine._current(engine) == db_engine._head()
        upgrades: list[object] = []
        monkeypatch.setattr(db_engine, "_upgrade", upgrades.append)
        await migrate(engine)
        assert upgrades == []
        # One revision behind: the upgrade runs.
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '0012'"))
        await migrate(engine)
        assert len(upgrades) == 1
    finally:
        await engine.dispose()
