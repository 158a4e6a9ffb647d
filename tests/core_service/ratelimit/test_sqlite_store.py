"""The SQLite rate-limit store (several workers of one machine, no Redis): the shared window
semantics of `test_stores.py` run on it as they are, and several stores on one file, each with
its own connection and thread as each worker has, admit exactly the limit between them."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import sqlite3
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from core_service.ratelimit.sqlite_store import SqliteRateLimitStore
from core_service.ratelimit.store import Limit, RateLimitStore
from tests.core_service.ratelimit.test_stores import (  # noqa: F401 - the shared suite
    FakeClock,
    test_a_cost_above_the_limit_never_fits,
    test_a_refusal_consumes_nothing,
    test_adjust_ignores_buckets_outside_the_window,
    test_adjust_returns_tokens_but_never_below_zero,
    test_admits_exactly_the_limit_within_a_second,
    test_concurrent_admits_admit_exactly_the_limit,
    test_cost_zero_is_admitted_and_counts_nothing,
    test_keys_are_safe_for_any_model_name,
    test_no_limits_admits,
    test_peek_is_read_only,
    test_remaining_and_reset,
    test_retry_after_is_accurate_to_the_second,
    test_retry_after_on_random_histories,
    test_slots,
    test_the_rolling_window_frees_exactly_the_oldest_bucket,
    test_the_same_key_twice_must_hold_the_total,
    test_the_window_frees_after_60_seconds,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest_asyncio.fixture
async def store(tmp_path: pathlib.Path, clock: FakeClock) -> AsyncIterator[RateLimitStore]:
    opened = SqliteRateLimitStore(tmp_path / "ratelimit.db", clock)
    try:
        yield opened
    finally:
        await opened.close()


@pytest_asyncio.fixture
async def workers(tmp_path: pathlib.Path, clock: FakeClock) -> AsyncIterator[list[RateLimitStore]]:
    opened = [SqliteRateLimitStore(tmp_path / "shared.db", clock) for _ in range(3)]
    try:
        yield list(opened)
    finally:
        for one in opened:
            await one.close()


async def test_workers_on_one_file_share_one_limit(workers: list[RateLimitStore]) -> None:
    limits = [Limit("acct:a:rpm", 25, 1), Limit("acct:a:tpm", 10_000, 7)]
    decisions = await asyncio.gather(*(workers[i % 3].admit(limits) for i in range(120)))
    assert sum(d.admitted for d in decisions) == 25
    for worker in workers:
        assert [s.remaining for s in await worker.peek(limits)] == [0, 10_000 - 25 * 7]


async def test_workers_share_slots_and_true_ups(workers: list[RateLimitStore]) -> None:
    tokens = await asyncio.gather(*(workers[i % 3].acquire_slot("dep:x", 4, 30) for i in range(9)))
    held = [token for token in tokens if token is not None]
    assert len(held) == 4
    await workers[2].release_slot("dep:x", held[0])
    assert await workers[0].acquire_slot("dep:x", 4, 30) is not None
    assert await workers[1].acquire_slot("dep:x", 4, 30) is None
    tpm = Limit("acct:b:tpm", 1000, 600)
    decision = await workers[0].admit([tpm])
    assert not (await workers[1].admit([tpm])).admitted
    await workers[2].adjust(tpm.key, decision.second, -500)
    assert (await workers[1].admit([tpm])).admitted


async def test_counts_outlive_a_worker(tmp_path: pathlib.Path, clock: FakeClock) -> None:
    """A worker that restarts (or a second that opens the file later) sees what was counted."""
    rpm = Limit("acct:c:rpm", 2, 1)
    first = SqliteRateLimitStore(tmp_path / "r.db", clock)
    assert (await first.admit([rpm])).admitted
    await first.close()
    second = SqliteRateLimitStore(tmp_path / "r.db", clock)
    try:
        assert (await second.admit([rpm])).admitted
        assert not (await second.admit([rpm])).admitted
    finally:
        await second.close()


@pytest.mark.parametrize("cost", [0, 3])
async def test_old_buckets_are_pruned(tmp_path: pathlib.Path, clock: FakeClock, cost: int) -> None:
    store = SqliteRateLimitStore(tmp_path / "p.db", clock)
    try:
        for n in range(5):
            await store.admit([Limit(f"acct:{n}:tpm", 100, cost)])
        clock.advance(61)
        await store.admit([Limit("acct:z:tpm", 100, 1)])
        with sqlite3.connect(tmp_path / "p.db") as db:
            (rows,) = db.execute("SELECT count(*) FROM buckets").fetchone()
        assert rows == 1
    finally:
        await store.close()


async def test_a_worker_holding_the_lock_never_blocks_the_event_loop(
    tmp_path: pathlib.Path, clock: FakeClock
) -> None:
    """While another process's transaction holds the file's write lock, calls wait for it on
    the store's thread (together, in one batch), and the event loop runs on meanwhile."""
    store = SqliteRateLimitStore(tmp_path / "l.db", clock)
    rpm = Limit("acct:d:rpm", 3, 1)
    try:
        assert (await store.admit([rpm])).admitted  # the file exists, the lock is free
        with contextlib.closing(sqlite3.connect(tmp_path / "l.db", isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            waiting = [asyncio.create_task(store.admit([rpm])) for _ in range(4)]
            for _ in range(20):
                await asyncio.sleep(0)  # the loop is free: these steps run
            assert not any(task.done() for task in waiting)
            other.execute("COMMIT")
            decisions = await asyncio.gather(*waiting)
        assert [d.admitted for d in decisions].count(True) == 2
        assert (await store.peek([rpm]))[0].remaining == 0
    finally:
        await store.close()


async def test_a_worker_that_starts_while_another_holds_the_lock_waits_its_turn(
    tmp_path: pathlib.Path, clock: FakeClock
) -> None:
    """A worker's first call opens its connections, which sets the file's journal mode; if
    another worker holds the lock of a file not yet in WAL mode at that instant (all workers
    start at once on a new file), the call waits for it on the store's thread like any other,
    instead of failing. Seen with two workers under load: the second worker's first requests
    failed 503 ("database is locked")."""
    path = tmp_path / "l.db"
    late = SqliteRateLimitStore(path, clock)
    rpm = Limit("acct:e:rpm", 3, 1)
    try:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")  # a new file, in its first transaction
            other.execute("CREATE TABLE other_worker (x)")
            waiting = asyncio.create_task(late.admit([rpm]))
            for _ in range(20):
                await asyncio.sleep(0)
            assert not waiting.done()
            other.execute("COMMIT")
            assert (await waiting).admitted
        assert (await late.admit([rpm])).admitted  # and on the loop's own connection now
        assert (await late.peek([rpm]))[0].remaining == 1
    finally:
        await late.close()
