"""The money path of one busy account, alone: how many requests a second one account's holds
can be placed and settled at, on PostgreSQL, through the core's one writer (group commit).

Each simulated request places a hold and then settles it, as the pipeline does, with
`--concurrency` of them in flight, all on ONE account (the case whose balance row used to cap
at 78 requests/s: two transactions per request, each waiting for the row lock). Nothing else of
the gateway runs (no gRPC, HTTP or upstream), so the figure is the database path's ceiling,
not the gateway's throughput (which `./scripts/bench --one-account` gives).

    .venv/bin/python scripts/bench_holds.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pathlib
import secrets
import statistics
import sys
import tempfile
import time

import asyncpg

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from core_service.accounts.emails import parse_email  # noqa: E402
from core_service.billing.hold_store import Settlement  # noqa: E402
from core_service.composition import build_core  # noqa: E402
from core_service.settings import Settings  # noqa: E402


async def _run(url: str, concurrency: int, seconds: float) -> None:
    admin = await asyncpg.connect(url)
    name = f"kyma_holds_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    base = url.rsplit("/", 1)[0]
    try:
        with tempfile.TemporaryDirectory() as data:
            settings = Settings(
                database_url=f"{base}/{name}",
                data_dir=pathlib.Path(data),
                grpc_port=0,
                metrics_port=None,
            )
            core = await build_core(settings)
            try:
                await core.start()
                created = await core.accounts.store.create_account(parse_email("busy@example.com"))
                account_id = created.account.id
                holds = core.billing.metering.holds
                latencies: list[float] = []
                done = 0
                stop = time.monotonic() + seconds

                async def client() -> None:
                    nonlocal done
                    while time.monotonic() < stop:
                        started = time.monotonic()
                        placed = await holds.place(
                            account_id, 2_000, request_id=secrets.token_hex(8), model="m"
                        )
                        assert placed.hold_id is not None, "the balance ran out"
                        await holds.settle(
                            placed.hold_id, account_id, Settlement(1_000, 10, 10, False)
                        )
                        latencies.append(time.monotonic() - started)
                        done += 1

                began = time.monotonic()
                await asyncio.gather(*(client() for _ in range(concurrency)))
                elapsed = time.monotonic() - began
                stats = core.storage.writer.stats
                latencies.sort()
                print(
                    f"one account, {concurrency} in flight, {elapsed:.1f} s: {done} requests, "
                    f"{done / elapsed:.0f} requests/s (place + settle each); "
                    f"{stats.batches} batches, {stats.operations / max(1, stats.batches):.1f} "
                    f"operations a batch; request p50 "
                    f"{statistics.median(latencies) * 1000:.1f} ms, "
                    f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms"
                )
            finally:
                await core.stop(grace=1)
    finally:
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="an admin URL of a PostgreSQL")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(_run(args.database_url, args.concurrency, args.seconds))


if __name__ == "__main__":
    main()
