"""`FallbackRateLimitStore`: a real redis-server of our own, killed and restarted mid-test, and fake
primaries that hang or fail."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
import pytest_asyncio
import redis.asyncio
import redis.exceptions

from core_service.ratelimit.fallback import FallbackRateLimitStore
from core_service.ratelimit.local_store import InProcessRateLimitStore
from core_service.ratelimit.redis_store import RedisRateLimitStore
from core_service.ratelimit.store import Decision, Limit, LimitState

T = TypeVar("T")
LOGGER = "core_service.ratelimit.fallback"
TIMEOUT_S = 0.05
# Against the real redis-server: far above a loaded machine's round trip, so only a dead server
# (refused at once, whatever the timeout) puts the store in degraded mode.
REDIS_TIMEOUT_S = 2.0
LIVENESS_S = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_800_000_000_250
        self.mono = 1000.0

    def now(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=self.ms)

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.ms += round(seconds * 1000)
        self.mono += seconds


class RedisServer:
    """A redis-server subprocess on a free loopback port that can be killed and restarted there."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.asyncio.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            for _ in range(1500):  # liveness: 30 s
                try:
                    if await client.ping():
                        return
                except (redis.exceptions.ConnectionError, OSError):
                    await asyncio.sleep(0.02)
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)


@pytest_asyncio.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    try:
        await server.start()
        yield server
    finally:
        server.kill()


async def answered(call: Awaitable[T]) -> T:
    """The call answers, whatever Redis does. The bound is liveness only (200 times TIMEOUT_S, so
    a hang fails rather than stalls the suite); that the store's own timeout cut a hung primary
    short is shown by `FakePrimary.abandoned`, not by a stopwatch."""
    return await asyncio.wait_for(call, LIVENESS_S)


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level]


@pytest.mark.redis
async def test_redis_lost_and_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    client = redis.asyncio.Redis(host="127.0.0.1", port=redis_server.port)
    local = InProcessRateLimitStore(clock)
    shared = RedisRateLimitStore(client, clock)
    store = FallbackRateLimitStore(
        shared,
        local,
        clock,
        node_share=4,
        timeout_s=REDIS_TIMEOUT_S,
        retry_interval_s=1.0,
    )
    rpm = Limit("acct:a:rpm", 8, 1)
    tpm = Limit("acct:a:tpm", 4000, 500)
    try:
        # Healthy: Redis counts, with the global limits.
        for _ in range(3):
            decision = await answered(store.admit([rpm]))
            assert decision.admitted and decision.states[0].limit == 8
        assert (await answered(store.peek([rpm])))[0].remaining == 5
        shared_slot = await answered(store.acquire_slot("dep:d:concurrency", 8, 30))
        assert shared_slot is not None
        assert not store.degraded and store.fallbacks == 0
        assert await client.exists(shared.window_key(rpm.key)) == 1

        redis_server.kill()

        # Degraded: per-node limits (8 / 4 = 2), one warning; seeded with this node's share of
        # what Redis had counted (3 / 4, rounded up: 1), so one more is admitted here.
        decisions = [await answered(store.admit([rpm])) for _ in range(3)]
        assert [d.admitted for d in decisions] == [True, False, False]
        assert {d.states[0].limit for d in decisions} == {2}
        assert decisions[-1].retry_after_s == 60
        assert store.degraded and store.fallbacks == 3
        assert (await answered(store.peek([rpm])))[0].remaining == 0

        # Token true-ups go to the store that counted them, and to the journal for Redis.
        tokens = await answered(store.admit([tpm]))
        assert tokens.admitted and tokens.states[0].remaining == 500  # 4000 / 4 = 1000 per node
        await answered(store.adjust(tpm.key, tokens.second, -300))
        assert (await answered(store.peek([tpm])))[0].remaining == 800
        assert store.pending == 2  # rpm +1 and tpm +200 at this second

        # Slots: per-node share too, released where they were taken.
        local_slots = [
            await answered(store.acquire_slot("dep:d:concurrency", 8, 30)) for _ in range(3)
        ]
        assert local_slots[0] and local_slots[1] and local_slots[2] is None
        await answered(
            store.release_slot("dep:d:concurrency", shared_slot)
        )  # Redis is away: its TTL frees it

        # Redis still down when the retry interval has passed: a probe, in the background (the
        # call that started it is answered locally, as ever).
        clock.advance(1.0)
        assert not (await answered(store.admit([rpm]))).admitted
        await answered(store.probe_finished())
        assert store.degraded and store.pending == 2
        assert len(records(caplog, logging.WARNING)) == 1

        await redis_server.start()
        assert not (await answered(store.admit([rpm]))).admitted  # not retried before the interval
        await answered(store.probe_finished())
        assert store.degraded
        fallbacks = store.fallbacks

        # The interval passes: this call starts the probe and is answered locally (refused: the
        # node's share is used up); the probe reconnects and counts the journal into Redis.
        clock.advance(1.0)
        assert not (await answered(store.admit([rpm]))).admitted
        assert store.fallbacks == fallbacks + 1
        await answered(store.probe_finished())
        assert store.degraded and store.pending == 0  # Redis knows; the next call goes there
        decision = await answered(store.admit([rpm]))
        assert not store.degraded and store.fallbacks == fallbacks + 1
        # A fresh redis-server, told first what this node admitted alone: 1 + this one.
        assert store.pending == 0 and store.reconciled == 2
        assert decision.admitted and decision.states[0].limit == 8
        assert decision.states[0].remaining == 6
        assert (await shared.peek([tpm]))[0].remaining == 4000 - 200
        assert (
            len(records(caplog, logging.INFO)) == 1 and len(records(caplog, logging.WARNING)) == 1
        )

        # After recovery, a true-up of what was admitted locally goes to Redis, which holds it.
        await answered(store.adjust(tpm.key, tokens.second, -200))
        assert (await shared.peek([tpm]))[0].remaining == 4000
        # Slots taken locally are still released locally.
        assert await local.acquire_slot("dep:d:concurrency", 2, 30) is None
        assert local_slots[0] is not None
        await answered(store.release_slot("dep:d:concurrency", local_slots[0]))
        assert await local.acquire_slot("dep:d:concurrency", 2, 30) is not None
        slots_key = shared.slots_key("dep:d:concurrency")
        assert await client.zcard(slots_key) == 0
        remote_slot = await answered(store.acquire_slot("dep:d:concurrency", 8, 30))
        assert remote_slot is not None and await client.zcard(slots_key) == 1
        await answered(store.release_slot("dep:d:concurrency", remote_slot))
        assert await client.zcard(slots_key) == 0
    finally:
        await store.close()
        await client.aclose()


class FakePrimary:
    """A primary store that hangs (`hang`: never answers) or fails (`error`), counting the calls
    it gets and the hung ones its caller gave up on (`abandoned`)."""

    def __init__(self, clock: FakeClock, inner: InProcessRateLimitStore | None = None) -> None:
        self.inner = inner or InProcessRateLimitStore(clock)
        self.hang = False
        self.answer_in = 0.0  # seconds of (loop) time before each answer
        self.block_loop = 0.0  # seconds the node's event loop is then blocked (by someone else)
        self.error: BaseException | None = None
        self.calls = 0
        self.abandoned = 0

    async def _enter(self) -> None:
        self.calls += 1
        if self.block_loop:
            asyncio.get_running_loop().call_soon(time.sleep, self.block_loop)
        if self.answer_in:
            await asyncio.sleep(self.answer_in)
        if self.hang:
            try:
                await asyncio.Event().wait()  # no answer, ever
            except asyncio.CancelledError:
                self.abandoned += 1
                raise
        if self.error is not None:
            raise self.error

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        await self._enter()
        return await self.inner.admit(limits)

    async def adjust(self, key: str, second: int, delta: int) -> None:
        await self._enter()
        await self.inner.adjust(key, second, delta)

    async def peek(self, limits: Sequence[Limit]) -> tuple[LimitState, ...]:
        await self._enter()
        return await self.inner.peek(limits)

    async def acquire_slot(self, key: str, limit: int, ttl_s: float) -> str | None:
        await self._enter()
        return await self.inner.acquire_slot(key, limit, ttl_s)

    async def release_slot(self, key: str, token: str) -> None:
        await self._enter()
        await self.inner.release_slot(key, token)

    async def close(self) -> None:
        await self._enter()


def fallback_over(
    primary: FakePrimary, clock: FakeClock, node_share: int = 2
) -> FallbackRateLimitStore:
    return FallbackRateLimitStore(
        primary,
        InProcessRateLimitStore(clock),
        clock,
        node_share=node_share,
        timeout_s=TIMEOUT_S,
        retry_interval_s=1.0,
        probe_timeout_s=TIMEOUT_S,
    )


async def test_a_slow_redis_falls_back_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    primary = FakePrimary(clock)
    store = fallback_over(primary, clock, node_share=3)
    rpm = Limit("acct:a:rpm", 10, 1)
    assert (await store.admit([rpm])).states[0].limit == 10

    primary.hang = True
    decision = await answered(store.admit([rpm]))
    assert decision.admitted and decision.states[0].limit == 3
    # Answered because the store gave up on the hung call at its timeout.
    assert primary.abandoned == 1
    assert store.degraded and store.fallbacks == 1 and primary.calls == 2
    for _ in range(20):  # not even tried until the retry interval has passed
        await answered(store.admit([rpm]))
    assert primary.calls == 2 and store.fallbacks == 21

    clock.advance(1.0)
    # This call starts a probe and does not wait for it: answered locally.
    assert (await answered(store.admit([rpm]))).states[0].limit == 3
    await answered(store.probe_finished())  # the probe times out too
    assert primary.calls == 3 and primary.abandoned == 2 and store.degraded

    primary.hang = False
    clock.advance(1.0)
    await answered(store.admit([rpm]))  # starts the probe; answered locally
    await answered(store.probe_finished())
    # The probe: the two requests admitted locally are counted in.
    assert primary.calls == 4 and store.degraded and store.reconciled == 1
    decision = await answered(store.admit([rpm]))
    assert primary.calls == 5 and not store.degraded and decision.states[0].limit == 10
    # 1 counted before the outage, 2 admitted locally (3 per node, seeded with 1; the call that
    # started the probe was refused there), this one.
    assert decision.states[0].remaining == 6
    assert len(records(caplog, logging.WARNING)) == 1 and len(records(caplog, logging.INFO)) == 1


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ConnectionError("refused"),
        redis.exceptions.TimeoutError("slow"),
        redis.exceptions.ResponseError("OOM command not allowed"),
        ConnectionResetError("reset by peer"),
    ],
    ids=type,
)
async def test_redis_errors_never_reach_callers(error: BaseException) -> None:
    clock = FakeClock()
    primary = FakePrimary(clock)
    primary.error = error
    store = fallback_over(primary, clock, node_share=2)
    limits = [Limit("acct:a:rpm", 3, 1), Limit("acct:a:model:m:rpm", 1, 1)]
    decision = await store.admit(limits)
    assert decision.admitted and [s.limit for s in decision.states] == [
        1,
        1,
    ]  # at least 1 per limit
    assert not (await store.admit(limits)).admitted
    assert [s.remaining for s in await store.peek(limits)] == [0, 0]
    await store.adjust("acct:a:tpm", decision.second - 5, -10)
    token = await store.acquire_slot("dep:d:concurrency", 3, 10)
    assert token is not None
    await store.release_slot("dep:d:concurrency", token)
    await store.release_slot("dep:d:concurrency", "redis:gone")
    await store.close()
    assert store.degraded and store.fallbacks == 4


async def test_follow_ups_on_a_healthy_store_that_fail_degrade_it_quietly() -> None:
    clock = FakeClock()
    primary = FakePrimary(clock)
    store = fallback_over(primary, clock)
    decision = await store.admit([Limit("acct:a:tpm", 100, 50)])
    token = await store.acquire_slot("dep:d:concurrency", 2, 10)
    assert token is not None and not store.degraded

    primary.error = redis.exceptions.ConnectionError("gone")
    await store.adjust("acct:a:tpm", decision.second, -20)
    assert store.degraded
    calls = primary.calls
    await answered(store.release_slot("dep:d:concurrency", token))
    await answered(store.adjust("acct:a:tpm", decision.second, -20))
    assert primary.calls == calls  # not tried while degraded

    primary.error = None
    clock.advance(1.0)
    await store.release_slot("dep:d:concurrency", token)  # a follow-up does not probe
    assert store.degraded
    await store.peek([Limit("acct:a:tpm", 100, 0)])  # starts the probe; answered locally
    await answered(store.probe_finished())
    # The give-back that failed is lost (errs strict); the one made while degraded was kept and
    # counted in by the probe: 50 - 20.
    assert (await store.peek([Limit("acct:a:tpm", 100, 0)]))[0].remaining == 70
    assert not store.degraded


async def test_a_limit_of_zero_stays_closed_when_shared() -> None:
    clock = FakeClock()
    primary = FakePrimary(clock)
    primary.error = OSError("unreachable")
    store = fallback_over(primary, clock, node_share=4)
    decision = await store.admit([Limit("acct:a:rpm", 0, 1)])
    assert not decision.admitted and decision.states[0].limit == 0
    with pytest.raises(ValueError):
        fallback_over(primary, clock, node_share=0)


async def test_a_busy_event_loop_is_not_taken_for_a_slow_redis() -> None:
    """The loop is blocked for four timeouts once the command is out (a burst of requests, a
    long callback), and Redis's answer, there after 1 ms, waits for the node to read it. A
    wall-clock deadline expires during the block; the store's budget counts only Redis's time."""
    clock = FakeClock()
    primary = FakePrimary(clock)
    primary.answer_in = 0.001
    primary.block_loop = 4 * TIMEOUT_S
    store = fallback_over(primary, clock)
    rpm = Limit("acct:a:rpm", 10, 1)
    for _ in range(3):
        decision = await answered(store.admit([rpm]))
        assert decision.admitted and decision.states[0].limit == 10
    assert not store.degraded and store.fallbacks == 0 and primary.abandoned == 0

    # A Redis that does not answer still runs out its budget, however late the loop is.
    primary.hang = True
    assert (await answered(store.admit([rpm]))).states[0].limit == 5
    assert store.degraded and primary.abandoned == 1


async def test_fallback_never_multiplies_a_limit() -> None:
    """Two nodes over one shared primary (per-model limit 25, two expected nodes), 100 requests
    at a time: Redis counts; Redis gone (the seeds keep a full window full); a fresh counter
    while Redis is gone (each node admits its share); Redis back (what the nodes admitted alone
    is counted in first). Never more than the limit plus the fallback share (2 × 12)."""
    clock = FakeClock()
    shared = InProcessRateLimitStore(clock)
    primaries = [FakePrimary(clock, shared) for _ in range(2)]
    nodes = [fallback_over(primary, clock, node_share=2) for primary in primaries]

    async def burst(key: str) -> int:
        limit = [Limit(key, 25, 1)]
        decisions = await asyncio.gather(*(nodes[i % 2].admit(limit) for i in range(100)))
        return sum(d.admitted for d in decisions)

    full, fresh = "acct:a:model:m:rpm", "acct:b:model:m:rpm"
    assert await burst(full) == 25

    for primary in primaries:
        primary.error = redis.exceptions.ConnectionError("gone")
    assert await burst(full) == 0  # each node seeded with ceil(25 / 2) of its share of 12
    assert await burst(fresh) == 2 * 12  # nothing counted before: each node its share
    assert all(node.degraded for node in nodes)

    for primary in primaries:
        primary.error = None
    clock.advance(1.0)
    # The first call on each node starts its probe; the burst is still served locally, where
    # each node's share is used up. Once the probes have counted the 24 into Redis, one more fits.
    assert await burst(fresh) == 0
    for node in nodes:
        await answered(node.probe_finished())
    assert await burst(fresh) == 1
    assert await burst(full) == 0
    assert not any(node.degraded for node in nodes)
    assert [node.pending for node in nodes] == [0, 0]
    assert [s.remaining for s in await shared.peek([Limit(fresh, 25, 0)])] == [0]

    clock.advance(60)  # a new window: the shared limit, whole again
    assert await burst(fresh) == 25


async def test_no_request_waits_for_a_probe_of_a_hung_redis() -> None:
    """Redis hangs (a partition: no refusal, no answer). After each retry interval a probe
    starts in the background with its long budget; every request meanwhile is answered locally
    without waiting for it — while the probe is still hanging on the primary."""
    clock = FakeClock()
    primary = FakePrimary(clock)
    store = FallbackRateLimitStore(
        primary,
        InProcessRateLimitStore(clock),
        clock,
        node_share=2,
        timeout_s=TIMEOUT_S,
        retry_interval_s=1.0,
        probe_timeout_s=LIVENESS_S * 10,  # a probe that would outlast the test's liveness bound
    )
    rpm = Limit("acct:a:rpm", 100, 1)
    try:
        primary.hang = True
        await answered(store.admit([rpm]))
        assert store.degraded and primary.abandoned == 1
        clock.advance(1.0)
        for _ in range(5):  # the first starts the probe; none waits for it
            decision = await answered(store.admit([rpm]))
            assert decision.admitted and decision.states[0].limit == 50
        async with asyncio.timeout(LIVENESS_S):  # the probe reaches the primary, hangs there
            while primary.calls < 2:
                await asyncio.sleep(0.01)
        assert primary.abandoned == 1 and store.degraded
        assert (await answered(store.admit([rpm]))).admitted
    finally:
        primary.hang = False  # for the primary's own close; the probe hangs on, until cancelled
        await answered(store.close())  # cancels the probe
    assert primary.abandoned > 1  # the probe's calls (one per journal entry) were given up
