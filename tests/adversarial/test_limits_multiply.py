"""Limits that multiply (issue 12, SPEC §5): 100 concurrent requests for one model over two cores
(half over gRPC to the cores, half over HTTP to their bridges) sharing Redis (per-model limit 25, two expected nodes), with Redis answering slowly, then down,
then back. Never more than the limit plus the documented fallback share (fallback.py: each node
admits at most limit ÷ expected nodes = 12 on its own, so 25 + 2 × 12 in all), and much less in
practice:

- slow (a proxy delaying each reply, both cores' event loops busy with the burst): no fallback at
  all, exactly the limit;
- down: a window Redis had filled stays full (each node seeded with its share of what Redis
  counted); a fresh account gets each node's share;
- back: what the nodes admitted alone is counted into Redis first, so the fresh account gets only
  what is left of its limit — not a second full limit.

The cores are the fixtures' real gRPC servers in this process, on one frozen clock (so every
phase falls in one window, however slowly the machine runs, and Redis is probed again only when
the test moves the clock); Redis is a redis-server of the test's own behind a delaying TCP proxy
(a subprocess), both killed at the end.
"""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import httpx
import orjson
import pytest
import pytest_asyncio
import redis.asyncio
import redis.exceptions

from core_service.ratelimit.fallback import FallbackRateLimitStore
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.conftest import running_kyma  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock
from tests.fakes.pg_cluster import free_port

pytestmark = [pytest.mark.redis, pytest.mark.asyncio]

PROXY = pathlib.Path(__file__).with_name("delay_proxy.py")
LIMIT = 25  # the free tier's per-model RPM
SHARE = LIMIT // 2  # each node's own limit while Redis is away (two expected nodes)
DELAY_MS = 5
LIVENESS_S = 30.0


class Processes:
    """The redis-server and the proxy in front of it; only these are ever killed."""

    def __init__(self) -> None:
        self.redis_port, self.proxy_port = free_port(), free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None

    async def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.asyncio.Redis(port=self.redis_port, socket_connect_timeout=1)
        deadline = time.monotonic() + LIVENESS_S
        try:
            while True:
                try:
                    if await client.ping():
                        return
                except (redis.exceptions.ConnectionError, OSError):
                    pass
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    def start_proxy(self) -> None:
        self.proxy = subprocess.Popen(
            [sys.executable, str(PROXY), str(self.proxy_port), str(self.redis_port), str(DELAY_MS)],
            stdout=subprocess.PIPE,
        )
        assert self.proxy.stdout is not None and self.proxy.stdout.readline() == b"ready\n"

    def kill_proxy(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait(timeout=5)

    def kill(self) -> None:
        self.kill_proxy()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.kill()
            self.redis.wait(timeout=5)


@pytest.fixture
def processes() -> Iterator[Processes]:
    running = Processes()
    try:
        yield running
    finally:
        running.kill()


@pytest_asyncio.fixture
async def two_cores(
    processes: Processes, upstream, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[list, FrozenClock]]:
    await processes.start_redis()
    processes.start_proxy()
    clock = FrozenClock()
    shared = {
        "redis_url": f"redis://127.0.0.1:{processes.proxy_port}/0",
        "redis_key_prefix": f"kyma-test:{secrets.token_hex(4)}:",
        "expected_nodes": 2,  # the default 50 ms timeout: the point of the test
    }
    async with running_kyma(tmp_path, None, upstream, "sqlite", clock=clock, **shared) as first:
        async with running_kyma(
            tmp_path, None, upstream, "sqlite", clock=clock, **shared
        ) as second:
            yield [first, second], clock


async def burst(cores: list, key: str) -> int:
    """100 concurrent chat completions for one model, alternating between the cores, half over
    gRPC to the core and half over HTTP to its bridge: how many were admitted (the others must
    be refused: RESOURCE_EXHAUSTED, or 429)."""
    chat = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    request = pb.CreateChatCompletionRequest(body=orjson.dumps(chat))
    metadata = (("authorization", f"Bearer {key}"),)
    limits = httpx.Limits(max_connections=100)
    clients = [
        httpx.AsyncClient(base_url=core.http_url, timeout=30, limits=limits) for core in cores
    ]

    async def over_grpc(core) -> bool:
        try:
            await pb_grpc.InferenceServiceStub(core.channel).CreateChatCompletion(
                request, metadata=metadata
            )
            return True
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            return False

    async def over_http(http: httpx.AsyncClient) -> bool:
        reply = await http.post(
            "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {key}"}
        )
        assert reply.status_code in (200, 429), reply.text
        return reply.status_code == 200

    try:
        calls = [
            over_http(clients[i % 2]) if i % 4 >= 2 else over_grpc(cores[i % 2]) for i in range(100)
        ]
        return sum(await asyncio.gather(*calls))
    finally:
        for client in clients:
            await client.aclose()


async def test_limits_never_multiply(two_cores, processes: Processes) -> None:
    cores, clock = two_cores
    stores = [core.core.limits.store for core in cores]
    assert all(isinstance(store, FallbackRateLimitStore) for store in stores)
    _, full = await cores[0].create_account()
    _, fresh = await cores[0].create_account()

    # Slow Redis, busy nodes: Redis decides every request.
    assert await burst(cores, full) == LIMIT
    assert [store.fallbacks for store in stores] == [0, 0]
    assert not any(store.degraded for store in stores)

    # Down.
    processes.kill_proxy()
    assert await burst(cores, full) == 0  # the window Redis filled stays full
    assert await burst(cores, fresh) == 2 * SHARE  # nothing counted before: each node its share
    assert all(store.degraded for store in stores)
    assert all(store.pending > 0 for store in stores)

    # Back (slow again), once the retry interval has passed.
    processes.start_proxy()
    clock.advance(1.0)
    full_after = await burst(cores, full)
    fresh_after = await burst(cores, fresh)
    assert not any(store.degraded for store in stores)
    assert [store.pending for store in stores] == [0, 0]
    assert full_after == 0
    # Each node's first request after the interval probed: it counted the node's 12 in before
    # any shared decision, so only what the limit has left (1) is admitted.
    assert fresh_after == LIMIT - 2 * SHARE
    for core in cores:
        await core.verify_ledger()
