"""The composition root closes what it opened when a later build step fails: no database
connection, pool or worker thread outlives a failed `build_core`."""

from __future__ import annotations

import asyncio
import pathlib

import asyncpg
import pytest

from core_service.composition import build_core
from core_service.composition import core as composition
from core_service.settings import Settings
from tests.fakes.postgres import fresh_database


class _Injected(RuntimeError):
    pass


def _fail(*_args: object, **_kwargs: object) -> None:
    raise _Injected("the last build step failed")


async def _connections(url: str, name: str) -> int:
    conn = await asyncpg.connect(url.replace(name, "test"))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
        )
    finally:
        await conn.close()


async def test_a_failed_build_closes_what_was_opened_on_postgres(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(composition, "build_server", _fail)
    with fresh_database("kyma_build") as url:
        name = url.rsplit("/", 1)[1]
        settings = Settings(data_dir=tmp_path, database_url=url, metrics_port=None)
        with pytest.raises(_Injected):
            await build_core(settings)
        # The engine's pool and the hold store's pool were open (migrations ran): now none is.
        for _ in range(50):
            if await _connections(url, name) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _connections(url, name) == 0


def _open_files_under(directory: pathlib.Path) -> list[str]:
    found = []
    for fd in pathlib.Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith(str(directory)):
            found.append(str(target))
    return found


async def test_a_failed_build_closes_what_was_opened_on_sqlite(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(composition, "build_server", _fail)
    with pytest.raises(_Injected):
        await build_core(Settings(data_dir=tmp_path, metrics_port=None))
    assert (tmp_path / "kyma.db").exists()  # migrations ran: the database was open
    await asyncio.sleep(0)  # aiosqlite closes on its own thread
    for _ in range(50):
        if not _open_files_under(tmp_path):
            break
        await asyncio.sleep(0.1)
    assert not _open_files_under(tmp_path), "the database is still open after a failed build"
