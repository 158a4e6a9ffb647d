"""What a core on the embedded default loads: no driver it does not use (each is memory in every
worker; docs/performance.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys


def test_a_core_on_sqlite_does_not_load_the_postgresql_driver_nor_stripe() -> None:
    probe = (
        "import sys, core_service.serve; "
        "print(sorted(m for m in ('asyncpg', 'stripe') if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"


def test_database_errors_are_told_apart_once_asyncpg_is_loaded() -> None:
    import asyncpg

    from core_service.db.errors import configuration_hint, is_unavailable

    assert is_unavailable(asyncpg.CannotConnectNowError("starting up"))
    assert not is_unavailable(asyncpg.UniqueViolationError("duplicate"))
    assert configuration_hint(asyncpg.InvalidSQLStatementNameError("gone")) is not None
