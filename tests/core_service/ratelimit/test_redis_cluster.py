"""The Redis store on a real Redis Cluster: three `redis-server --cluster-enabled yes` nodes of
the test's own (on free ports, in a temporary directory), joined by `redis-cli --cluster create`,
and killed at the end (only those)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions

from core_service.composition.limits import open_limits
from core_service.ratelimit.fallback import FallbackRateLimitStore
from core_service.ratelimit.redis_store import RedisRateLimitStore, hash_tag
from core_service.ratelimit.store import Limit, rate_key
from core_service.settings import Settings
from core_service.tasks import BackgroundTasks

pytestmark = pytest.mark.redis

LIVENESS_S = 60.0


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


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """Free ports whose cluster-bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port < 55535 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


@contextlib.contextmanager
def redis_cluster(tmp: pathlib.Path) -> Iterator[list[int]]:
    ports = cluster_ports(3)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            node_dir = tmp / str(port)
            node_dir.mkdir()
            processes.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--dir",
                        str(node_dir),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + LIVENESS_S
        for port in ports:
            while (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "ping"], capture_output=True, check=False
                ).stdout.strip()
                != b"PONG"
            ):
                assert time.monotonic() < deadline, f"redis-server on {port} did not start"
                time.sleep(0.05)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=LIVENESS_S,
        )
        for port in ports:
            while (
                b"cluster_state:ok"
                not in subprocess.run(
                    ["redis-cli", "-p", str(port), "cluster", "info"],
                    capture_output=True,
                    check=False,
                ).stdout
            ):
                assert time.monotonic() < deadline, "the cluster did not come up"
                time.sleep(0.05)
        yield ports
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=5)


@pytest.fixture(scope="module")
def cluster_ports_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    with redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as ports:
        yield ports


@pytest_asyncio.fixture
async def cluster(cluster_ports_up: list[int]) -> AsyncIterator[redis.asyncio.cluster.RedisCluster]:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=cluster_ports_up[0])
    yield client
    await client.aclose()


async def test_limits_on_a_redis_cluster(cluster: redis.asyncio.cluster.RedisCluster) -> None:
    clock = FakeClock()
    prefix = f"kyma:test:{secrets.token_hex(4)}:"
    store = RedisRateLimitStore(cluster, clock, key_prefix=prefix)
    await store.warm(4)

    # One account's counters share one slot, so one script checks and consumes them all.
    limits = [
        Limit(rate_key("acct", "a", "rpm"), 30, 1),
        Limit(rate_key("acct", "a", "model", "m/x:y", "rpm"), 25, 1),
        Limit(rate_key("acct", "a", "tpm"), 10_000, 7),
    ]
    slots = {await cluster.cluster_keyslot(store.window_key(limit.key)) for limit in limits}
    assert len(slots) == 1
    decisions = await asyncio.gather(*(store.admit(limits) for _ in range(100)))
    assert sum(d.admitted for d in decisions) == 25
    assert [s.remaining for s in await store.peek(limits)] == [5, 0, 10_000 - 25 * 7]
    refused = await store.admit(limits)
    assert not refused.admitted and refused.retry_after_s == 60
    await store.adjust(limits[1].key, decisions[0].second, -1)
    assert (await store.admit(limits)).admitted

    # Accounts spread over the cluster's nodes: no global hot slot.
    owners = set()
    for n in range(40):
        key = store.window_key(rate_key("acct", f"acct-{n}", "rpm"))
        slot = await cluster.cluster_keyslot(key)
        owners.add(cluster.get_node_from_key(key).port)
        assert (await store.admit([Limit(rate_key("acct", f"acct-{n}", "rpm"), 1, 1)])).admitted
        assert slot == await cluster.cluster_keyslot(
            store.window_key(rate_key("acct", f"acct-{n}", "tpm"))
        )
    assert len(owners) == 3

    # Sign-up limits (two families in one call) share the family's slot; slots work too.
    signup = [
        Limit(rate_key("signup", "ip", "127.0.0.1"), 2, 1),
        Limit(rate_key("signup", "email", "a@b.c"), 2, 1),
    ]
    assert hash_tag(signup[0].key) == hash_tag(signup[1].key) == "signup"
    assert [(await store.admit(signup)).admitted for _ in range(3)] == [True, True, False]
    token = await store.acquire_slot(rate_key("dep", "m", "d", "slots"), 1, 30)
    assert token is not None
    assert await store.acquire_slot(rate_key("dep", "m", "d", "slots"), 1, 30) is None
    await store.release_slot(rate_key("dep", "m", "d", "slots"), token)

    # The window moves on in the cluster as on one server.
    clock.advance(60)
    assert [s.remaining for s in await store.peek(limits)] == [30, 25, 10_000]


async def test_the_composition_root_serves_from_a_cluster(
    cluster_ports_up: list[int], tmp_path: pathlib.Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        redis_url=f"redis://127.0.0.1:{cluster_ports_up[1]}/0",
        redis_cluster=True,
        redis_key_prefix=f"kyma:test:{secrets.token_hex(4)}:",
        redis_timeout_ms=2000,  # far above a loaded machine's round trip: no fallback here
        expected_nodes=2,
    )
    clock = FakeClock()
    async with contextlib.AsyncExitStack() as stack:
        limits = await open_limits(settings, clock, BackgroundTasks(), stack)
        store = limits.store
        assert isinstance(store, FallbackRateLimitStore)
        rpm = [Limit(rate_key("acct", "z", "rpm"), 3, 1)]
        assert [(await store.admit(rpm)).admitted for _ in range(4)] == [True, True, True, False]
        assert not store.degraded and store.fallbacks == 0
