"""Where the SQLite hold store runs a batch (`hold_store_sqlite.py`): on the event loop when the
write lock is free that instant, on its thread when another connection holds it (waiting its
turn there, the loop serving others meanwhile) or the batch is large, and rolled back whole
wherever it fails."""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from core_service.billing.hold_store import Batch, Ending, EndOrder, NewHold, Settlement
from core_service.billing.hold_store_sqlite import SqliteHoldStore
from core_service.billing.ledger import (
    SYSTEM_WELCOME_BONUS,
    EntryKind,
    Ledger,
    Transfer,
    open_balance_in,
)
from core_service.clock import SystemClock
from core_service.db.engine import create_engine, migrate

FUNDS = 10**12


@pytest_asyncio.fixture
async def database(tmp_path: pathlib.Path) -> AsyncIterator[tuple[pathlib.Path, str]]:
    """A migrated SQLite file and one funded account."""
    path = tmp_path / "kyma.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    account = f"acct_{secrets.token_hex(6)}"
    async with engine.begin() as conn:
        await open_balance_in(conn, account)
    await Ledger(engine, SystemClock()).post(
        Transfer("bonus", EntryKind.WELCOME_BONUS, SYSTEM_WELCOME_BONUS, account, FUNDS, "test")
    )
    await engine.dispose()
    yield path, account


@pytest_asyncio.fixture
async def store(database: tuple[pathlib.Path, str]) -> AsyncIterator[SqliteHoldStore]:
    made = SqliteHoldStore(database[0], inline_max=4)
    yield made
    await made.close()


def _hold(account: str, amount: int = 1000) -> NewHold:
    now = datetime.now(UTC)
    return NewHold(
        hold_id=f"hold_{secrets.token_hex(6)}",
        account_id=account,
        amount_nanos=amount,
        request_id="req",
        model="m",
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


def _balance(path: pathlib.Path, account: str) -> tuple[int, int]:
    with sqlite3.connect(path) as db:
        row = db.execute(
            "SELECT balance_nanos, held_nanos FROM balances WHERE ledger_account = ?", (account,)
        ).fetchone()
    return int(row[0]), int(row[1])


async def test_a_small_batch_on_a_free_lock_commits_on_the_loop(
    store: SqliteHoldStore, database: tuple[pathlib.Path, str]
) -> None:
    path, account = database
    hold = _hold(account)
    outcome = await store.commit(Batch(places=[hold]))
    assert outcome.placed[hold.hold_id] is None
    settle = EndOrder(
        hold.hold_id,
        account,
        Ending.SETTLED,
        datetime.now(UTC),
        Settlement(400, 10, 5, estimated=False),
    )
    outcome = await store.commit(Batch(ends=[settle]))
    assert outcome.ended[hold.hold_id] == 400
    assert (store.stats.inline, store.stats.threaded) == (2, 0)
    assert _balance(path, account) == (FUNDS - 400, 0)


async def test_a_lock_held_elsewhere_sends_the_batch_to_the_thread_which_waits_for_it(
    store: SqliteHoldStore, database: tuple[pathlib.Path, str]
) -> None:
    path, account = database
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer (another process, the engine) holds it
    hold = _hold(account, 5000)
    committing = asyncio.ensure_future(store.commit(Batch(places=[hold])))
    turns = 0
    while store.stats.threaded == 0 or turns < 20:  # the loop is not blocked while it waits
        await asyncio.sleep(0.001)
        turns += 1
    assert not committing.done()
    other.execute("COMMIT")
    other.close()
    outcome = await committing
    assert outcome.placed[hold.hold_id] is None
    assert (store.stats.inline, store.stats.threaded) == (0, 1)
    assert _balance(path, account) == (FUNDS, 5000)
    await store.commit(Batch(places=[_hold(account)]))  # free again: back on the loop
    assert store.stats.inline == 1


async def test_a_large_batch_commits_on_the_thread(
    store: SqliteHoldStore, database: tuple[pathlib.Path, str]
) -> None:
    path, account = database
    holds = [_hold(account, 100) for _ in range(5)]  # more than inline_max
    outcome = await store.commit(Batch(places=holds))
    assert all(outcome.placed[h.hold_id] is None for h in holds)
    assert (store.stats.inline, store.stats.threaded) == (0, 1)
    assert _balance(path, account) == (FUNDS, 500)


async def test_a_batch_that_fails_on_the_loop_leaves_nothing_and_the_next_lands(
    store: SqliteHoldStore, database: tuple[pathlib.Path, str]
) -> None:
    path, account = database
    duplicate = _hold(account, 700)
    await store.commit(Batch(places=[duplicate]))
    # The same hold id again, with a new one before it in the batch: the insert fails.
    with pytest.raises(sqlite3.IntegrityError):
        await store.commit(Batch(places=[_hold(account, 300), duplicate]))
    assert _balance(path, account) == (FUNDS, 700)  # nothing of the failed batch
    await store.commit(Batch(places=[_hold(account, 50)]))
    assert _balance(path, account) == (FUNDS, 750)


async def test_batches_on_the_loop_hand_the_log_checkpoint_to_the_thread(
    database: tuple[pathlib.Path, str],
) -> None:
    path, account = database
    store = SqliteHoldStore(path, checkpoint_every=3)
    try:
        for _ in range(3):
            await store.commit(Batch(places=[_hold(account, 1)]))
        assert store._checkpointing is not None
        await store._checkpointing
        wal = path.with_name(path.name + "-wal")
        with sqlite3.connect(path) as db:  # everything written is in the database file
            busy, frames, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames == done
        assert wal.exists()
    finally:
        await store.close()
    assert _balance(path, account) == (FUNDS, 3)
