"""The key lookup that concurrent requests share: one caller leaving never fails the others.

Found by the loopback cluster test: the first request to look a key up owned the lookup, and
when it was cancelled (its client gone), every request waiting on the same key got its
cancellation and answered CANCELLED — a 500 to clients that had done nothing wrong.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core_service import keys
from core_service.accounts.auth import Authenticator
from core_service.accounts.store import KeyOwner
from core_service.ratelimit.tiers import TierTable
from core_service.values import DEFAULT_TIERS
from tests.fakes.clock import FrozenClock

OWNER = KeyOwner(
    key_id="key_1",
    account_id="acct_1",
    account_status="active",
    total_purchased_nanos=0,
    pinned_tier=None,
    revoked=False,
)


class _SlowStore:
    """find_key_owner waits for `answer` to be set; counts its lookups."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.lookups = 0

    async def find_key_owner(self, key_hash: bytes) -> KeyOwner | None:
        self.lookups += 1
        await self.answer.wait()
        return OWNER


def authenticator(store: Any) -> Authenticator:
    return Authenticator(store, FrozenClock(), TierTable(DEFAULT_TIERS), cache_seconds=300)


async def test_a_cancelled_caller_does_not_fail_the_others_waiting_on_its_lookup() -> None:
    store = _SlowStore()
    auth = authenticator(store)
    bearer = f"Bearer {keys.generate()}"
    first = asyncio.create_task(auth.authenticate(bearer))
    others = [asyncio.create_task(auth.authenticate(bearer)) for _ in range(3)]
    await asyncio.sleep(0)  # all four are waiting on the one lookup
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    store.answer.set()
    principals = await asyncio.gather(*others)
    assert {p.account_id for p in principals} == {"acct_1"}
    assert store.lookups == 1
    # And it was cached for the next request.
    assert (await auth.authenticate(bearer)).key_id == "key_1" and store.lookups == 1


async def test_a_failed_lookup_fails_every_caller_waiting_on_it() -> None:
    class Broken:
        async def find_key_owner(self, key_hash: bytes) -> KeyOwner | None:
            await asyncio.sleep(0)
            raise ConnectionError("the database went away")

    auth = authenticator(Broken())
    bearer = f"Bearer {keys.generate()}"
    results = await asyncio.gather(
        *(auth.authenticate(bearer) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results), results
