"""Redis cost of the rate limiter (issue 12): Redis CPU per admission for an account active every
second, and Redis commands per request with and without deployment limits.

    .venv/bin/python scripts/bench_limiter.py [--redis-url URL] [--accounts 20] [--per-second 1]

By default it starts a redis-server of its own on a free port (so `INFO commandstats`, which is
server-wide, counts nothing but this run) and kills it at the end. With `--redis-url` it uses that
server instead (pick a database nobody else uses; only this run's keys are deleted, but the
counters then include everyone's traffic).

Method: a fake clock; 120 seconds of history at `--per-second` admissions per second for each of
`--accounts` accounts (each admission: the account's three counters RPM, per-model RPM, TPM); `CONFIG RESETSTAT` after the first 60 seconds
(so the window is full), then the next 60 seconds are measured. Redis CPU per admission is the
EVALSHA `usec_per_call` (the script's whole run, the commands it calls included) and, as a
cross-check, `used_cpu_user + used_cpu_sys` delta per admission (networking included). Commands
per request count every command Redis executed (scripts and the commands inside them), for the
limiter's whole work on one request: admission, token true-up, and with deployment limits the
gate's enter (RPM/TPM and a concurrency slot) and leave (slot release, true-up). Then this
process's own CPU per admission through the fallback and Redis stores, as a core spends it, and
last through the SQLite store that workers share when there is no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis.asyncio

from core_service.catalog import Deployment, DeploymentLimits, Model
from core_service.ratelimit.limiter import AccountLimiter, AccountLimits, DeploymentGate, Ticket
from core_service.ratelimit.redis_store import RedisRateLimitStore
from core_service.ratelimit.store import Limit
from core_service.tasks import BackgroundTasks
from core_service.values import Principal, Tier


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_250

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.ms)

    def monotonic(self) -> float:
        return self.ms / 1000

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)


TIER = Tier(tier=4, min_purchased_usd=Decimal(0), rpm=10**9, model_rpm=10**9, tpm=10**12)


def request_limits(account: str, tokens: int = 100) -> tuple[Limit, Limit, Limit]:
    """The counters one request of `account` for model "m" is admitted against (requests, the
    model's requests, tokens), as the core builds them, under limits no run reaches."""
    principal = Principal(account_id=account, key_id="k", account_status="active", tier=TIER)
    return AccountLimits.of(principal, "m", tokens).all()


async def stats(client: redis.asyncio.Redis) -> tuple[dict[str, dict[str, float]], float]:
    commands = await client.info("commandstats")
    cpu = await client.info("cpu")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def calls(commands: dict[str, dict[str, float]]) -> int:
    return int(sum(v["calls"] for k, v in commands.items() if k != "cmdstat_config"))


async def cpu_per_admission(
    client: redis.asyncio.Redis, prefix: str, per_second: int, accounts: int
) -> None:
    clock = FakeClock()
    store = RedisRateLimitStore(client, clock, key_prefix=prefix)
    every = [request_limits(f"bench-{n}") for n in range(accounts)]
    cpu_before = 0.0
    for second in range(120):
        if second == 60:
            await client.config_resetstat()
            _, cpu_before = await stats(client)
        for limits in every:
            for _ in range(per_second):
                assert (await store.admit(limits)).admitted
        clock.advance(1)
    commands, cpu_after = await stats(client)
    admissions = 60 * per_second * accounts
    evalsha = commands["cmdstat_evalsha"]
    # The floor: what a round trip costs Redis whatever the command (a PING each).
    _, floor_before = await stats(client)
    for _ in range(admissions):
        await client.ping()
    _, floor_after = await stats(client)
    cpu = (cpu_after - cpu_before) / admissions * 1e6
    floor = (floor_after - floor_before) / admissions * 1e6
    print(
        f"{accounts} account(s) active every second, {per_second} admission(s)/s each, "
        f"window full, {admissions} measured:"
    )
    print(f"  EVALSHA usec_per_call: {evalsha['usec_per_call']:.1f} µs (Redis's own wall clock)")
    print(
        f"  INFO cpu per admission: {cpu:.1f} µs; per PING: {floor:.1f} µs; difference {cpu - floor:.1f} µs"
    )
    print(f"  Redis commands per admission: {calls(commands) / admissions:.2f}")


async def commands_per_request(
    client: redis.asyncio.Redis, prefix: str, deployment_limits: bool
) -> None:
    clock = FakeClock()
    store = RedisRateLimitStore(client, clock, key_prefix=prefix)
    tasks = BackgroundTasks()
    limiter = AccountLimiter(store, tasks, shared=lambda: True)
    gate = DeploymentGate(store, tasks)
    deployment = Deployment(
        name="d",
        base_url="http://127.0.0.1:1",
        model="up",
        limits=DeploymentLimits(rpm=10**6, tpm=10**9, max_concurrent=1000)
        if deployment_limits
        else DeploymentLimits(),
    )
    model = Model(name="m", deployments=(deployment,))
    tier = Tier(tier=4, min_purchased_usd=Decimal(0), rpm=10**9, model_rpm=10**9, tpm=10**12)
    principal = Principal(account_id="bench2", key_id="k", account_status="active", tier=tier)
    for _ in range(30):  # a warm window
        await limiter.admit(principal, "m", 100)
        clock.advance(1)
    await tasks.drain(10)
    await client.config_resetstat()
    requests = 200
    for i in range(requests):
        admission = await limiter.admit(principal, "m", 100)
        ticket = await gate.enter(model, deployment, 100)
        assert isinstance(ticket, Ticket)
        gate.leave(model, ticket, 60)
        limiter.true_up(admission, 60)
        await tasks.drain(10)
        if i % 10 == 9:
            clock.advance(1)
    commands, _ = await stats(client)
    scripts = commands["cmdstat_evalsha"]["calls"]
    label = (
        "with deployment limits (rpm, tpm, max_concurrent)"
        if deployment_limits
        else "without deployment limits"
    )
    print(
        f"per request {label}: {scripts / requests:.1f} scripts, "
        f"{calls(commands) / requests:.1f} Redis commands"
    )


async def client_cpu_per_admission(url: str, prefix: str, admissions: int = 20_000) -> None:
    """This process's CPU per admission through the store stack the core builds (fallback over
    Redis, 32 pooled connections, 32 in flight, 64 accounts): the node's side of the cost, which
    depends on redis-py's parser (hiredis when installed)."""
    import redis.utils

    from core_service.clock import SystemClock
    from core_service.ratelimit.fallback import FallbackRateLimitStore
    from core_service.ratelimit.local_store import InProcessRateLimitStore

    clock = SystemClock()
    pool = redis.asyncio.BlockingConnectionPool.from_url(url, max_connections=32)
    client = redis.asyncio.Redis(connection_pool=pool)
    shared = RedisRateLimitStore(client, clock, key_prefix=prefix + "client:")
    await shared.warm(32)
    store = FallbackRateLimitStore(
        shared, InProcessRateLimitStore(clock), clock, node_share=1, timeout_s=1.0
    )
    in_flight = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with in_flight:
            await store.admit(request_limits(f"client-{i % 64}"))

    try:
        await asyncio.gather(*(one(i) for i in range(2_000)))  # warm-up
        started = time.process_time()
        await asyncio.gather(*(one(i) for i in range(admissions)))
        used = time.process_time() - started
    finally:
        await client.aclose()
    print(
        f"node CPU per admission (hiredis {'on' if redis.utils.HIREDIS_AVAILABLE else 'off'}): "
        f"{used / admissions * 1e6:.1f} us"
    )


async def sqlite_cpu_per_admission(admissions: int = 5_000) -> None:
    """CPU per admission of the workers' SQLite store (no Redis), its three counters' windows
    full (60 seconds of buckets each), one caller: the lock is always free, so every admission
    is a transaction on the event loop's own connection."""
    import pathlib
    import tempfile

    from core_service.ratelimit.sqlite_store import SqliteRateLimitStore

    clock = FakeClock()
    limits = request_limits("a")
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteRateLimitStore(pathlib.Path(directory) / "ratelimit.db", clock)
        try:
            for _ in range(60):  # fill the window
                for _ in range(5):
                    await store.admit(limits)
                clock.advance(1)
            started = time.process_time()
            for n in range(admissions):
                await store.admit(limits)
                if n % 100 == 99:
                    clock.advance(1)
            used = time.process_time() - started
        finally:
            await store.close()
    print(
        f"SQLite store (workers without Redis) CPU per admission: {used / admissions * 1e6:.1f} us"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this server (default: start a private one)")
    parser.add_argument("--per-second", type=int, default=1, help="admissions per second each")
    parser.add_argument("--accounts", type=int, default=20, help="accounts admitting at once")
    args = parser.parse_args()
    process = None
    url = args.redis_url
    if url is None:
        port = free_port()
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
    client = redis.asyncio.Redis.from_url(url)
    prefix = f"kyma:bench:{secrets.token_hex(4)}:"
    try:
        for _ in range(500):
            try:
                await client.ping()
                break
            except (redis.exceptions.ConnectionError, OSError):
                time.sleep(0.02)
        await cpu_per_admission(client, prefix, args.per_second, args.accounts)
        await commands_per_request(client, prefix, deployment_limits=False)
        await commands_per_request(client, prefix, deployment_limits=True)
        await client_cpu_per_admission(url, prefix)
        await sqlite_cpu_per_admission()
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        if process is not None:
            process.kill()
            process.wait()


if __name__ == "__main__":
    asyncio.run(main())
