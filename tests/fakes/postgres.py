"""Fresh databases on the local PostgreSQL (127.0.0.1:5432, trust auth) for tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest


def psql(sql: str) -> None:
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A database of its own (its plain postgresql:// URL), dropped afterwards."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        psql(f"CREATE DATABASE {name}")
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"PostgreSQL on 127.0.0.1:5432 is needed (./scripts/services starts it): {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def asyncpg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)
