"""Property test: random sequences of bonus, purchase, hold, settle, release, adjust and expiry
against a simple in-memory model of what the balance must be."""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_service.billing.holds import Holds, Settlement
from core_service.billing.ledger import (
    SYSTEM_ADJUSTMENTS,
    SYSTEM_PURCHASES,
    SYSTEM_WELCOME_BONUS,
    EntryKind,
    InsufficientCredits,
    Ledger,
    Transfer,
    open_balance_in,
)
from core_service.billing.stores import open_hold_store
from core_service.billing.verify import verify_ledger
from core_service.db.engine import create_engine, migrate
from tests.fakes.postgres import asyncpg_url, fresh_database


class FakeClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return self.at.timestamp()


@dataclass
class Model:
    balance: int = 0
    purchased: int = 0
    holds: dict[str, int] = field(default_factory=dict)

    @property
    def available(self) -> int:
        return self.balance - sum(self.holds.values())


amounts = st.integers(min_value=1, max_value=10**10)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("bonus"), amounts),
        st.tuples(st.just("purchase"), amounts),
        st.tuples(
            st.just("adjust"), st.integers(min_value=-(10**10), max_value=10**10).filter(bool)
        ),
        st.tuples(st.just("hold"), st.integers(min_value=0, max_value=10**10)),
        st.tuples(st.just("settle"), st.integers(min_value=0, max_value=2 * 10**10)),
        st.tuples(st.just("release"), st.just(0)),
        st.tuples(st.just("expire"), st.just(0)),
        st.tuples(st.just("replay"), st.just(0)),
    ),
    max_size=25,
)


async def run(steps: list[tuple[str, int]], url: str) -> None:
    engine = create_engine(url)
    await migrate(engine)
    clock = FakeClock()
    ledger = Ledger(engine, clock)
    store = await open_hold_store(url)
    holds = Holds(store, engine, clock, ttl_seconds=60)
    # Examples share a PostgreSQL database: each gets its own account and keys.
    account, run_id = f"acct_{secrets.token_hex(6)}", secrets.token_hex(4)
    async with engine.begin() as conn:
        await open_balance_in(conn, account)
    model = Model()
    last_transfer: Transfer | None = None
    try:
        for number, (op, amount) in enumerate(steps):
            if op in ("bonus", "purchase", "adjust"):
                source = {
                    "bonus": SYSTEM_WELCOME_BONUS,
                    "purchase": SYSTEM_PURCHASES,
                    "adjust": SYSTEM_ADJUSTMENTS,
                }[op]
                kind = {
                    "bonus": EntryKind.WELCOME_BONUS,
                    "purchase": EntryKind.PURCHASE,
                    "adjust": EntryKind.ADJUSTMENT,
                }[op]
                debit, credit = (source, account) if amount > 0 else (account, source)
                last_transfer = Transfer(
                    f"k{run_id}-{number}", kind, debit, credit, abs(amount), actor="test"
                )
                try:
                    await ledger.post(last_transfer)
                except InsufficientCredits:
                    assert amount < 0 and -amount > model.available
                    continue
                model.balance += amount
                model.purchased += amount if op == "purchase" else 0
            elif op == "replay" and last_transfer is not None:
                try:
                    posted = await ledger.post(last_transfer)
                    assert not posted.created  # the same key twice makes one entry
                except InsufficientCredits:
                    pass  # the original was refused too; nothing was written either time
            elif op == "hold":
                placed = await holds.place(account, amount, request_id=f"r{number}", model="m")
                if amount <= model.available:
                    assert placed.hold_id is not None
                    model.holds[placed.hold_id] = amount
                else:
                    assert placed.hold_id is None and placed.available_nanos == model.available
            elif op in ("settle", "release") and model.holds:
                hold_id, held = next(iter(model.holds.items()))
                if op == "settle":
                    charged = await holds.settle(hold_id, Settlement(amount, 1, 1, False))
                    assert charged == min(amount, held)
                    model.balance -= charged
                    assert await holds.settle(hold_id, Settlement(amount, 1, 1, False)) is None
                else:
                    assert await holds.release(hold_id)
                    assert not await holds.release(hold_id)
                del model.holds[hold_id]
            elif op == "expire":
                clock.at += timedelta(seconds=61)
                # On a shared database this also ends other examples' leftovers.
                assert await holds.expire_due() >= len(model.holds)
                model.holds.clear()
            view = await ledger.balance(account)
            assert view.balance_nanos == model.balance
            assert view.held_nanos == sum(model.holds.values())
            assert view.total_purchased_nanos == model.purchased
            assert view.available_nanos >= 0 and view.balance_nanos >= 0
        clock.at += timedelta(seconds=61)
        await holds.expire_due()
        assert (await ledger.balance(account)).held_nanos == 0
        report = await verify_ledger(engine, clock)
        assert report.ok, report.problems
    finally:
        await store.close()
        await engine.dispose()


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with fresh_database("kyma_model") as url:
        yield asyncpg_url(url)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=operations)
def test_ledger_matches_the_model_on_sqlite(steps: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(run(steps, f"sqlite+aiosqlite:///{pathlib.Path(directory) / 'ledger.db'}"))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=operations)
def test_ledger_matches_the_model_on_postgres(
    postgres_url: str, steps: list[tuple[str, int]]
) -> None:
    asyncio.run(run(steps, postgres_url))
