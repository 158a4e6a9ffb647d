"""On the embedded SQLite, reads never wait for the write lock: with another process's
transaction holding it, the core stays SERVING (its health check is a read), new keys are
looked up, and balances are read — while writes wait their turn."""

from __future__ import annotations

import asyncio
import sqlite3

from tests.conftest import running_kyma


async def test_reads_go_on_while_a_writer_holds_the_lock(upstream, tmp_path) -> None:
    async with running_kyma(tmp_path, None, upstream, "sqlite") as kyma:
        account_id, key = await kyma.create_account()
        # The write lock, held by someone else. Taken off the event loop, which this core
        # shares: a write of the core's own (a chore's) may be between its statements and its
        # COMMIT, which it can send only when the loop runs — waiting for the lock on the loop
        # would keep that write from ever ending (CI saw "database is locked" after 1 s).
        blocker = sqlite3.connect(
            tmp_path / "kyma.db", timeout=30, isolation_level=None, check_same_thread=False
        )
        await asyncio.to_thread(blocker.execute, "BEGIN IMMEDIATE")
        try:
            async with kyma.http() as http:
                # Three rounds of the once-a-second health check, each a read that would
                # time out after two seconds if it queued behind the lock.
                for _ in range(4):
                    ready = await http.get("/readyz")
                    assert ready.status_code == 200, ready.text
                    # No Redis: the limits are this machine's by design, not a degraded state.
                    assert ready.json()["rate_limits"] == "local"
                    await asyncio.sleep(1)
                # A key this core has never seen: looked up with a read.
                listed = await http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
                assert listed.status_code == 200
                assert (await kyma.core.ledger.balance(account_id)).balance_nanos > 0
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
