"""Request logs on SQLite and PostgreSQL (a fresh database per module, migrated as on start):
the batching writer (and what it does when the database stalls or is down), lookups, and
retention (whole daily partitions dropped on PostgreSQL; never another table)."""

from __future__ import annotations

import asyncio
import inspect
import pathlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.clock import SystemClock
from core_service.db.engine import create_engine, migrate
from core_service.db.models import LedgerEntry
from core_service.errors import InvalidRequest, NotFound
from core_service.logs.entry import RequestLogEntry
from core_service.logs.lookup import RequestRecords
from core_service.logs.query import RequestLogQuery
from core_service.logs.retention import LogRetention
from core_service.logs.writer import RequestLogWriter
from tests.fakes.postgres import asyncpg_url, fresh_database


class FakeClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()


@dataclass
class Db:
    backend: str
    url: str
    engine: AsyncEngine
    sqlite_path: pathlib.Path | None = None

    @property
    def postgres(self) -> bool:
        return self.backend == "postgres"


@pytest.fixture(scope="module")
def logs_pg_url() -> Iterator[str]:
    with fresh_database("kyma_logs") as url:
        yield asyncpg_url(url)


@pytest_asyncio.fixture(scope="module", params=["sqlite", "postgres"])
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Db]:
    path = None
    if request.param == "postgres":
        url = request.getfixturevalue("logs_pg_url")
    else:
        path = tmp_path_factory.mktemp("logs") / "kyma.db"
        url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(url)
    await migrate(engine)
    yield Db(request.param, url, engine, path)
    await engine.dispose()


def entry(
    account_id: str = "acct_a", at: datetime | None = None, **changes: object
) -> RequestLogEntry:
    made = RequestLogEntry(
        id="log_" + secrets.token_hex(8),
        created_at=at or datetime.now(UTC),
        request_id="req_" + secrets.token_hex(8),
        account_id=account_id,
        key_id="key_" + secrets.token_hex(4),
        endpoint="/v1/chat/completions",
        model="test-model",
        deployment="dep-1",
        status="ok",
        latency_ms=12.5,
        ttft_ms=3.25,
        prompt_tokens=11,
        completion_tokens=7,
        cost_nanos=1234,
        estimated=False,
        stream=True,
        request_body='{"messages":[{"role":"user","content":"héllo ✓"}]}',
        response_body='{"choices":[]}',
    )
    return replace(made, **changes) if changes else made


def new_account() -> str:
    return "acct_" + secrets.token_hex(6)


async def count(engine: AsyncEngine, where: str = "true", **params: object) -> int:
    async with engine.connect() as conn:
        return (
            await conn.execute(text(f"SELECT count(*) FROM request_logs WHERE {where}"), params)
        ).scalar_one()


async def partitions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'request_logs'"
            )
        )
        return {name for (name,) in rows}


async def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:  # liveness
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_writer_batches_and_flushes_on_stop(db: Db) -> None:
    account = new_account()
    # A long interval: only full batches go before stop().
    writer = RequestLogWriter(db.engine, SystemClock(), batch_size=50, flush_interval=60)
    inserts: list[int] = []
    original = writer._insert

    async def counting_insert(batch: list[RequestLogEntry]) -> None:
        inserts.append(len(batch))
        await original(batch)

    writer._insert = counting_insert  # type: ignore[method-assign]
    assert not inspect.iscoroutinefunction(writer.record)
    await writer.start()
    for _ in range(120):
        writer.record(entry(account))
    await wait_until(lambda: writer.written == 100)
    assert writer.pending == 20
    assert await count(db.engine, "account_id = :a", a=account) == 100

    await writer.stop(timeout=5)
    assert (writer.written, writer.pending, writer.dropped, writer.failed_batches) == (120, 0, 0, 0)
    assert inserts == [50, 50, 20]  # one multi-row statement per batch
    assert await count(db.engine, "account_id = :a", a=account) == 120
    writer.record(entry(account))  # after stop: not kept, counted
    assert writer.dropped == 1 and writer.pending == 0


async def test_writer_flushes_a_partial_batch_after_the_interval(db: Db) -> None:
    account = new_account()
    writer = RequestLogWriter(db.engine, SystemClock(), batch_size=500, flush_interval=0.05)
    await writer.start()
    for _ in range(3):
        writer.record(entry(account))
    await wait_until(lambda: writer.written == 3)
    assert await count(db.engine, "account_id = :a", a=account) == 3
    await writer.stop(timeout=5)


async def test_stalled_database_bounds_the_buffer_and_recording_stays_instant(db: Db) -> None:
    """The table is locked by another connection: the writer's batch hangs in the database."""
    account = new_account()
    capacity, extra = 200, 75
    if db.postgres:
        blocker = await asyncpg.connect(db.url.replace("postgresql+asyncpg", "postgresql"))
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE request_logs IN ACCESS EXCLUSIVE MODE")
    else:
        assert db.sqlite_path is not None
        sqlite_blocker = sqlite3.connect(db.sqlite_path, isolation_level=None)
        sqlite_blocker.execute("BEGIN IMMEDIATE")  # the write lock
    writer = RequestLogWriter(
        db.engine, SystemClock(), capacity=capacity, batch_size=50, flush_interval=0.01
    )
    await writer.start()
    try:
        writer.record(entry(account))
        await wait_until(
            lambda: len(writer._inflight) == 1
        )  # the writer is now stuck in the database
        for _ in range(capacity + extra - 1):
            writer.record(entry(account))
        # Decided before this test awaits anything: `record` (no coroutine) appends in memory,
        # or drops and counts, without waiting for the stuck writer.
        assert not inspect.iscoroutinefunction(writer.record)
        assert writer.dropped == extra
        assert writer.pending == capacity  # memory stops at capacity
        await asyncio.sleep(0.2)  # the writer's loop runs on: still stuck, nothing changes
        assert (writer.dropped, writer.pending, writer.written) == (extra, capacity, 0)
    finally:
        if db.postgres:
            await transaction.rollback()
            await blocker.close()
        else:
            sqlite_blocker.execute("ROLLBACK")
            sqlite_blocker.close()
    await writer.stop(timeout=10)
    assert (writer.written, writer.dropped, writer.pending) == (capacity, extra, 0)
    assert await count(db.engine, "account_id = :a", a=account) == capacity


async def test_database_down_retries_with_backoff_and_drops_beyond_capacity(
    db: Db, tmp_path: pathlib.Path
) -> None:
    if db.postgres:
        url = "postgresql+asyncpg://postgres@127.0.0.1:9/nowhere"  # nothing listens on port 9
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'kyma.db'}"
    engine = create_engine(url)
    writer = RequestLogWriter(
        engine, SystemClock(), capacity=100, batch_size=10, flush_interval=0.01
    )
    await writer.start()
    for _ in range(130):
        writer.record(entry())
    assert writer.dropped == 30 and writer.pending == 100
    await wait_until(lambda: writer.failed_batches >= 3)
    assert writer.pending == 100 and writer.written == 0
    # The database never comes back: only stop's own timeout can end this (the outer bound is
    # liveness only, 100 times the timeout).
    await asyncio.wait_for(writer.stop(timeout=0.3), 30)
    assert writer.dropped == 130 and writer.pending == 0  # what could not be written is counted
    await engine.dispose()


async def test_rows_the_database_refuses_do_not_block_their_batch(db: Db) -> None:
    account = new_account()
    writer = RequestLogWriter(db.engine, SystemClock(), batch_size=10, flush_interval=0.01)
    await writer.start()
    good = [entry(account) for _ in range(6)]
    # NUL cannot be stored in PostgreSQL text; a lone surrogate cannot be encoded as UTF-8.
    odd = [entry(account, request_body="a\x00b"), entry(account, response_body="x\ud800y")]
    hopeless = entry(account, prompt_tokens=2**70)  # beyond bigint: skipped, and counted
    for item in good[:3] + odd + [hopeless] + good[3:]:
        writer.record(item)
    await writer.stop(timeout=5)
    assert (writer.written, writer.rejected, writer.pending, writer.failed_batches) == (8, 1, 0, 0)
    found = await RequestLogQuery(db.engine).find(account_id=account)
    assert len(found) == 8
    by_request = {item.request_id: item for item in found}
    assert by_request[odd[1].request_id].response_body == "x?y"
    assert by_request[odd[0].request_id].request_body == ("a\ufffdb" if db.postgres else "a\x00b")


async def test_entries_round_trip_through_query(db: Db) -> None:
    account, other = new_account(), new_account()
    base = datetime(2024, 3, 10, 9, 30, 15, 123456, tzinfo=UTC)
    mine = [
        entry(account, base + timedelta(minutes=i), latency_ms=10.0 + i, prompt_tokens=i)
        for i in range(8)
    ]
    mine[2] = replace(
        mine[2],
        key_id=None,
        ttft_ms=None,
        status="RATE_LIMIT_EXCEEDED",
        estimated=True,
        stream=False,
        response_body="",
        cost_nanos=2**40,
        cached_tokens=1,
        cache_write_tokens=1,
        reasoning_tokens=3,
        hold_id="hold_" + secrets.token_hex(4),
    )
    theirs = [entry(other, base + timedelta(minutes=i, seconds=30)) for i in range(3)]
    writer = RequestLogWriter(db.engine, FakeClock(base), batch_size=4, flush_interval=0.01)
    await writer.start()
    for item in mine + theirs:
        writer.record(item)
    await writer.stop(timeout=5)
    assert writer.written == 11

    query = RequestLogQuery(db.engine)
    newest_first = list(reversed(mine))
    assert await query.find(account_id=account) == newest_first
    assert await query.find(account_id=account, limit=3) == newest_first[:3]
    assert await query.find(request_id=mine[2].request_id) == [mine[2]]
    assert await query.find(account_id=other, request_id=mine[2].request_id) == []
    window = await query.find(
        account_id=account, since=mine[2].created_at, until=mine[5].created_at
    )
    assert window == [mine[4], mine[3], mine[2]]  # since inclusive, until exclusive
    both = await query.find(since=base, until=base + timedelta(minutes=2))
    assert both == [theirs[1], mine[1], theirs[0], mine[0]]
    # Other time zones mean the same instant.
    east = mine[3].created_at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))
    assert await query.find(account_id=account, since=east, limit=1) == [mine[7]]

    for bad in (
        dict(limit=0),
        dict(limit=1001),
        dict(limit=True),
        dict(since=datetime(2024, 1, 1)),
        dict(until=datetime(2024, 1, 1)),
        dict(since=base, until=base - timedelta(seconds=1)),
    ):
        with pytest.raises(InvalidRequest):
            await query.find(**bad)  # type: ignore[arg-type]


async def test_an_account_looks_up_its_own_request_and_its_ledger_entries(db: Db) -> None:
    account, other = new_account(), new_account()
    now = datetime.now(UTC)
    hold = "hold_" + secrets.token_hex(6)
    mine = entry(
        account,
        now,
        hold_id=hold,
        cost_nanos=1500,
        cached_tokens=4,
        cache_write_tokens=0,
        reasoning_tokens=2,
    )
    old = entry(account, now - timedelta(days=8), hold_id="hold_" + secrets.token_hex(6))
    writer = RequestLogWriter(db.engine, FakeClock(now), flush_interval=0.01)
    await writer.start()
    for item in (mine, old):
        writer.record(item)
    await writer.stop(timeout=5)
    async with db.engine.begin() as conn:
        for key, amount in ((f"usage:{hold}", 1000), (f"usage:{hold}:late", 500)):
            await conn.execute(
                insert(LedgerEntry).values(
                    idempotency_key=key,
                    kind="usage",
                    debit_account=account,
                    credit_account="system:usage_revenue",
                    amount_nanos=amount,
                    created_at=now,
                    actor=mine.request_id,
                    reference=hold,
                )
            )
    records = RequestRecords(db.engine, LogRetention(db.engine, FakeClock(now), days=7))
    found = await records.get(account, mine.request_id)
    assert (found.model, found.deployment, found.status) == ("test-model", "dep-1", "ok")
    assert (found.prompt_tokens, found.completion_tokens) == (11, 7)
    assert (found.cached_tokens, found.reasoning_tokens, found.cost_nanos) == (4, 2, 1500)
    assert found.created_at == mine.created_at and found.hold_id == hold
    assert [e.amount_nanos for e in found.ledger_entries] == [1000, 500]
    # Another account's request is not there for this one; nor is one past retention, even
    # before the purge removes it.
    with pytest.raises(NotFound):
        await records.get(other, mine.request_id)
    with pytest.raises(NotFound):
        await records.get(account, old.request_id)
    with pytest.raises(InvalidRequest):
        await records.get(account, "")


async def test_writer_creates_a_missing_day_partition_and_recovers_from_a_dropped_one(
    db: Db,
) -> None:
    if not db.postgres:
        pytest.skip("partitions are PostgreSQL's")
    day = datetime(2029, 12, 25, 8, 0, tzinfo=UTC)
    assert "request_logs_p20291225" not in await partitions(db.engine)
    account = new_account()
    writer = RequestLogWriter(db.engine, FakeClock(day), batch_size=10, flush_interval=0.01)
    await writer.start()
    writer.record(entry(account, day))
    await wait_until(lambda: writer.written == 1)
    assert {"request_logs_p20291225", "request_logs_p20291226"} <= await partitions(db.engine)

    async with (
        db.engine.begin() as conn
    ):  # dropped behind the writer's back (its cache says it exists)
        await conn.execute(text("DROP TABLE request_logs_p20291225"))
    writer.record(entry(account, day + timedelta(hours=1)))
    await writer.stop(timeout=5)
    assert (writer.written, writer.dropped) == (2, 0)
    assert (
        await count(db.engine, "account_id = :a", a=account) == 1
    )  # the first row went with its day
    assert "request_logs_p20291225" in await partitions(db.engine)


async def test_retention_purges_old_logs_and_nothing_else(db: Db) -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    clock = FakeClock(now)
    retention = LogRetention(db.engine, clock, days=90)  # cutoff 2024-02-01 12:00
    account = new_account()
    old = [
        entry(account, datetime(2024, 1, 10, 1, 0, tzinfo=UTC)),
        entry(account, datetime(2024, 1, 10, 23, 0, tzinfo=UTC)),
        entry(account, datetime(2024, 1, 31, 23, 59, tzinfo=UTC)),
    ]
    # Older than the cutoff, but its day is not: PostgreSQL keeps it until the whole day is due.
    cutoff_day = entry(account, datetime(2024, 2, 1, 6, 0, tzinfo=UTC))
    recent = [entry(account, datetime(2024, 4, 20, 10, 0, tzinfo=UTC)), entry(account, now)]
    writer = RequestLogWriter(db.engine, clock, flush_interval=0.01)
    await writer.start()
    for item in old + [cutoff_day] + recent:
        writer.record(item)
    await writer.stop(timeout=5)
    assert writer.written == 6

    marker = "purge-" + secrets.token_hex(4)
    long_ago = "2020-01-01 00:00:00"
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO ledger_entries (idempotency_key, kind, debit_account, credit_account, amount_nanos, "
                "created_at, actor, reason) VALUES (:k, 'adjustment', 'a', 'b', 5, :t, 'test', 'test')"
            ),
            {"k": marker, "t": datetime(2020, 1, 1) if db.postgres else long_ago},
        )
        await conn.execute(
            text(
                "INSERT INTO usage_daily (account_id, day, model, requests, prompt_tokens, completion_tokens, "
                "cost_nanos, estimated_requests) VALUES (:a, :d, 'm', 1, 1, 1, 1, 0)"
            ),
            {"a": marker, "d": date(2020, 1, 1) if db.postgres else "2020-01-01"},
        )

    old_days = ["request_logs_p20240110", "request_logs_p20240131"]
    if db.postgres:
        assert set(old_days) <= await partitions(db.engine)
    expected_rows = 3 if db.postgres else 4
    expected_partitions = old_days if db.postgres else []

    dry = await retention.purge(dry_run=True)
    assert (dry.rows, dry.partitions, dry.cutoff) == (
        expected_rows,
        expected_partitions,
        now - timedelta(days=90),
    )
    assert await count(db.engine, "account_id = :a", a=account) == 6  # a dry run changes nothing
    if db.postgres:
        assert set(old_days) <= await partitions(db.engine)

    report = await retention.purge()
    assert (report.rows, report.partitions) == (expected_rows, expected_partitions)
    left = await RequestLogQuery(db.engine).find(account_id=account)
    assert left == list(reversed(([cutoff_day] if db.postgres else []) + recent))
    if db.postgres:
        remaining = await partitions(db.engine)
        assert not set(old_days) & remaining
        assert {"request_logs_p20240201", "request_logs_p20240420"} <= remaining
        async with db.engine.connect() as conn:  # gone from the catalog, not just detached
            gone = await conn.execute(
                text("SELECT count(*) FROM pg_class WHERE relname = ANY(:n)"), {"n": old_days}
            )
            assert gone.scalar_one() == 0
    async with db.engine.connect() as conn:
        ledger = await conn.execute(
            text("SELECT count(*) FROM ledger_entries WHERE idempotency_key = :k"), {"k": marker}
        )
        usage = await conn.execute(
            text("SELECT count(*) FROM usage_daily WHERE account_id = :a"), {"a": marker}
        )
        assert (ledger.scalar_one(), usage.scalar_one()) == (1, 1)

    again = await retention.purge()
    assert (again.rows, again.partitions) == (0, [])


async def test_ensure_partitions_creates_the_days_ahead(db: Db) -> None:
    retention = LogRetention(db.engine, FakeClock(datetime(2031, 6, 30, 23, 0, tzinfo=UTC)))
    created = await retention.ensure_partitions(days_ahead=3)
    if not db.postgres:
        assert created == []
        return
    days = [f"request_logs_p{day}" for day in ("20310630", "20310701", "20310702", "20310703")]
    assert created == days
    assert set(days) <= await partitions(db.engine)
    assert await retention.ensure_partitions(days_ahead=3) == []  # idempotent
    async with db.engine.connect() as conn:
        bounds = await conn.execute(
            text(
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = 'request_logs_p20310701'"
            )
        )
        assert (
            bounds.scalar_one()
            == "FOR VALUES FROM ('2031-07-01 00:00:00') TO ('2031-07-02 00:00:00')"
        )


def test_retention_window_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LogRetention(create_engine("sqlite+aiosqlite://"), SystemClock(), days=0)
