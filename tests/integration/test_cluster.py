"""Kyma as a cluster on loopback: two cores and two bridges as real processes (`kyma serve core`,
`kyma serve bridge`), each bridge on both cores (`KYMA_CORE_ADDRESS`), a real nginx in front of
the bridges with the repository's proxy settings, on one PostgreSQL database and one Redis.
A client through the load balancer sees one service: limits exact, balances exact, a revoked
key refused everywhere, and a core stopped in the middle of load loses no request.

Every wait is for an event (an answer, a row, a refusal) under a generous liveness bound;
nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import grpc
import httpx
import openai
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import create_async_engine

from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from kyma.routing.v1 import routing_service_pb2, routing_service_pb2_grpc
from tests.conftest import ISSUED_KEYS, UPSTREAM_KEY, Upstream, write_catalog
from tests.fakes.cluster import KymaProcess, MixedLoad, kyma_process, nginx
from tests.fakes.postgres import asyncpg_url, fresh_database
from tests.fakes.waiting import LIVENESS, until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADMIN = "admin-token-cluster"
# Tier 0 out of the way of the load; tier 1 (pinned, never reached by purchases) is small.
TIERS = [
    {"tier": 0, "min_purchased_usd": "0", "rpm": 100_000, "model_rpm": 100_000, "tpm": 10**10},
    {"tier": 1, "min_purchased_usd": "1000000", "rpm": 7, "model_rpm": 7, "tpm": 10**10},
]
# The tests' catalogue prices test-model at $1 / $2 per million tokens: nano-dollars per token.
INPUT_NANOS, OUTPUT_NANOS = 1_000, 2_000


@dataclass
class Cluster:
    url: str  # the load balancer
    database_url: str
    db: asyncpg.Connection
    cores: list[KymaProcess]
    bridges: list[KymaProcess]
    admin: admin_service_pb2_grpc.AdminServiceStub

    async def account(self, credit_usd: str = "20") -> tuple[str, str]:
        auth = (("authorization", f"Bearer {ADMIN}"),)
        created = await self.admin.CreateAccount(
            admin_service_pb2.CreateAccountRequest(email=f"c-{secrets.token_hex(5)}@example.com"),
            metadata=auth,
        )
        ISSUED_KEYS.add(created.api_key_secret)
        await self.admin.AdjustCredits(
            admin_service_pb2.AdjustCreditsRequest(
                account_id=created.account.id, amount_usd=credit_usd, reason="t", actor="t"
            ),
            metadata=auth,
        )
        return created.account.id, created.api_key_secret

    async def settled(self, account_id: str) -> None:
        async def none_open() -> bool:
            return not await self.db.fetchval(
                "SELECT count(*) FROM credit_holds WHERE account_id = $1 AND status = 'open'",
                account_id,
            )

        await until(none_open, "every hold of the account ended")

    async def every_bridge_reaches_every_core(self) -> None:
        """Until each bridge has had a request answered by each core: its channel has them all
        in its rotation (a core joins it once connected and its health watched)."""
        _, key = await self.account()
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=LIVENESS) as http:
            for bridge in self.bridges:
                seen: set[str] = set()

                async def both_seen(bridge: KymaProcess = bridge, seen: set[str] = seen) -> bool:
                    reply = await http.post(
                        f"{bridge.address}/v1/chat/completions",
                        json={**body, "max_tokens": 1},
                        headers={"authorization": f"Bearer {key}"},
                    )
                    assert reply.status_code == 200, reply.text
                    node = await self.db.fetchval(
                        "SELECT node_id FROM credit_holds WHERE request_id = $1",
                        reply.headers["x-request-id"],
                    )
                    seen.add(node)
                    return len(seen) == len(self.cores)

                await until(both_seen, f"{bridge.address} to reach every core")


@pytest_asyncio.fixture(scope="module")
async def cluster(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    catalog = write_catalog(tmp / "catalog.yaml", upstream)
    shared = {"KYMA_BRIDGE_TOKEN": "bridge-token-cluster", "KYMA_LOG_LEVEL": "INFO"}
    with fresh_database("kyma_cluster") as url:
        core_env = {
            **shared,
            "KYMA_DATABASE_URL": url,
            "KYMA_REDIS_URL": "redis://127.0.0.1:6379/0",
            "KYMA_REDIS_KEY_PREFIX": f"kyma-test:{secrets.token_hex(4)}:",
            "KYMA_REDIS_TIMEOUT_MS": "1000",
            "KYMA_EXPECTED_NODES": "2",
            "KYMA_GRPC_PORT": "0",
            "KYMA_METRICS_PORT": "0",
            "KYMA_ADMIN_TOKEN": ADMIN,
            "KYMA_CATALOG": str(catalog),
            "KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
            "KYMA_TIERS": json.dumps(TIERS),
            "KYMA_SHUTDOWN_GRACE_SECONDS": "30",
            # Small pools: the PostgreSQL these tests share has other users.
            "KYMA_DATABASE_POOL_SIZE": "4",
            "KYMA_DATABASE_MAX_OVERFLOW": "4",
        }
        async with contextlib.AsyncExitStack() as stack:
            # Both at once on the fresh database: their migrations must not collide.
            cores = list(
                await asyncio.gather(
                    *(
                        stack.enter_async_context(kyma_process("core", tmp / name, core_env))
                        for name in ("core-a", "core-b")
                    )
                )
            )
            bridge_env = {
                **shared,
                "KYMA_CORE_ADDRESS": ",".join(core.address for core in cores),
                "KYMA_HTTP_PORT": "0",
                "KYMA_BRIDGE_METRICS_PORT": "0",
            }
            bridges = list(
                await asyncio.gather(
                    *(
                        stack.enter_async_context(kyma_process("bridge", tmp / name, bridge_env))
                        for name in ("bridge-a", "bridge-b")
                    )
                )
            )
            balancer = stack.enter_context(nginx(tmp / "nginx", [b.address for b in bridges]))
            db = await asyncpg.connect(url)
            stack.push_async_callback(db.close)
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(cores[0].address))
            admin = admin_service_pb2_grpc.AdminServiceStub(channel)
            running = Cluster(balancer.url, url, db, cores, bridges, admin)
            await running.every_bridge_reaches_every_core()
            yield running
        engine = create_async_engine(asyncpg_url(url))
        try:
            report = await verify_ledger(engine, SystemClock())
        finally:
            await engine.dispose()
        assert report.ok, "ledger check failed:\n" + "\n".join(report.problems)


async def test_two_cores_started_at_once_migrate_the_database_once(cluster: Cluster) -> None:
    """The fixture started both cores at the same moment on a fresh database."""
    assert await cluster.db.fetchval("SELECT count(*) FROM alembic_version") == 1
    assert await cluster.db.fetchval("SELECT count(*) FROM core_nodes") == 2
    async with httpx.AsyncClient(base_url=cluster.url, timeout=LIVENESS) as http:
        ready = (await http.get("/readyz")).json()
    assert ready == {"status": "ready", "core": "serving", "rate_limits": "shared"}


async def test_limits_are_exact_across_the_cluster(cluster: Cluster) -> None:
    """Accounts allowed 7 requests a minute, through nginx to two bridges and two cores that
    count in one Redis. One after another, 7 are answered, by both cores (the balancer and each
    bridge's round robin alternate), and then 7 more at once are all refused with 429: the
    window is full on every core. 14 at once from another account: exactly 7 answered."""
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def pinned() -> tuple[str, dict[str, str]]:
        account_id, key = await cluster.account()
        await cluster.admin.PinTier(
            admin_service_pb2.PinTierRequest(account_id=account_id, tier=1),
            metadata=(("authorization", f"Bearer {ADMIN}"),),
        )
        return account_id, {"authorization": f"Bearer {key}"}

    def refused(replies: list[httpx.Response]) -> None:
        for reply in replies:
            assert reply.status_code == 429, reply.text
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(reply.headers["retry-after"]) >= 1

    async with httpx.AsyncClient(base_url=cluster.url, timeout=LIVENESS) as http:

        async def at_once(n: int, auth: dict[str, str]) -> list[httpx.Response]:
            calls = (http.post("/v1/chat/completions", json=body, headers=auth) for _ in range(n))
            return list(await asyncio.gather(*calls))

        first, auth = await pinned()
        for _ in range(7):
            reply = await http.post("/v1/chat/completions", json=body, headers=auth)
            assert reply.status_code == 200, reply.text
        refused(await at_once(7, auth))
        second, auth = await pinned()
        replies = await at_once(14, auth)
    statuses = Counter(reply.status_code for reply in replies)
    assert statuses == {200: 7, 429: 7}, statuses
    refused([reply for reply in replies if reply.status_code != 200])
    # The first account's 7 were admitted by both cores: the limit held across them.
    nodes = await cluster.db.fetchval(
        "SELECT count(DISTINCT node_id) FROM credit_holds WHERE account_id = $1", first
    )
    assert nodes == 2
    await cluster.settled(first)
    await cluster.settled(second)


async def test_balances_are_exact_across_the_cluster(cluster: Cluster) -> None:
    """40 requests (half streamed) through the load balancer, spread over every bridge and core:
    the balance falls by exactly what their usage costs, and every read of it, on any bridge
    and core, says the same."""
    account_id, key = await cluster.account(credit_usd="5")
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=cluster.url, timeout=LIVENESS) as http:
        start = (await http.get("/v1/account", headers=auth)).json()

        async with openai.AsyncOpenAI(
            base_url=f"{cluster.url}/v1", api_key=key, max_retries=0
        ) as sdk:

            async def one(n: int) -> int:
                messages = [{"role": "user", "content": f"story number {n}"}]
                if n % 2:
                    stream = await sdk.chat.completions.create(
                        model="test-model",
                        messages=messages,  # type: ignore[arg-type]
                        max_tokens=6,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    usage = [chunk async for chunk in stream][-1].usage
                else:
                    reply = await sdk.chat.completions.create(
                        model="test-model",
                        messages=messages,  # type: ignore[arg-type]
                        max_tokens=6,
                    )
                    usage = reply.usage
                assert usage is not None
                cost = usage.prompt_tokens * INPUT_NANOS + usage.completion_tokens * OUTPUT_NANOS
                # The charge every answer shows is the same, exactly.
                assert Decimal(usage.model_extra["cost"]) * 10**9 == cost, usage
                return cost

            semaphore = asyncio.Semaphore(8)

            async def bounded(n: int) -> int:
                async with semaphore:
                    return await one(n)

            costs = await asyncio.gather(*(bounded(n) for n in range(40)))
        await cluster.settled(account_id)
        views = [(await http.get("/v1/account", headers=auth)).json() for _ in range(8)]
    expected = Decimal(start["balance_usd"]) - Decimal(sum(costs)) / 10**9
    assert {(v["balance_usd"], v["held_usd"]) for v in views} == {
        (f"{expected:.9f}", "0.000000000")
    }
    nodes = await cluster.db.fetchval(
        "SELECT count(DISTINCT node_id) FROM credit_holds WHERE account_id = $1", account_id
    )
    assert nodes == 2


async def test_a_revoked_key_is_refused_everywhere(cluster: Cluster) -> None:
    """A key every core and bridge has just accepted (so every core has it in its key cache) is
    revoked through the load balancer: every core, every bridge and the load balancer refuse it
    once the account-event feed has reached them (every 0.5 s), never serving it again."""
    _, key = await cluster.account()
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=cluster.url, timeout=LIVENESS) as http:
        created = await http.post("/v1/account/keys", json={"name": "spare"}, headers=auth)
        assert created.status_code == 201, created.text
        spare = created.json()["key"]
        ISSUED_KEYS.add(spare)
        channels = [grpc.aio.insecure_channel(core.address) for core in cluster.cores]
        try:
            stubs = [routing_service_pb2_grpc.RoutingServiceStub(c) for c in channels]
            spare_metadata = (("authorization", f"Bearer {spare}"),)

            async def core_accepts(stub: routing_service_pb2_grpc.RoutingServiceStub) -> bool:
                try:
                    await stub.ListModels(
                        routing_service_pb2.ListModelsRequest(), metadata=spare_metadata
                    )
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                    return False
                return True

            async def bridge_accepts(url: str) -> bool:
                reply = await http.get(
                    f"{url}/v1/models", headers={"authorization": f"Bearer {spare}"}
                )
                assert reply.status_code in (200, 401), reply.text
                return reply.status_code == 200

            everywhere = [*(b.address for b in cluster.bridges), cluster.url]
            for stub in stubs:
                assert await core_accepts(stub)  # now in this core's key cache
            for url in everywhere:
                assert await bridge_accepts(url)

            revoked = await http.delete(f"/v1/account/keys/{created.json()['id']}", headers=auth)
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]

            async def refused_everywhere() -> bool:
                cores = [not await core_accepts(stub) for stub in stubs]
                bridges = [not await bridge_accepts(url) for url in everywhere]
                return all(cores) and all(bridges)

            await until(refused_everywhere, "the revocation to reach every core")
            # And it stays refused: no node serves it from a stale cache afterwards.
            for _ in range(3):
                assert await refused_everywhere()
        finally:
            for channel in channels:
                await channel.close()


async def test_a_core_stopped_mid_load_loses_no_request(
    cluster: Cluster, upstream: Upstream
) -> None:
    """12 clients send chat requests (half streamed) through the load balancer while one core
    is stopped (SIGTERM, as an orchestrator stops it): it stops taking calls, the bridges move
    its share to the other core, and it finishes what it had. Every request succeeds, whole,
    and is charged once."""
    # Requests spend a while at the upstream: several are at each core at any moment.
    await upstream.control(latency_ms=200)
    account_id, key = await cluster.account()
    stopping = cluster.cores[0]
    load = MixedLoad(cluster.url, key, workers=12)
    load.start()
    try:

        async def under_way() -> bool:
            assert not load.failures(), load.failures()[:5]
            open_per_node = await cluster.db.fetchval(
                "SELECT count(DISTINCT node_id) FROM credit_holds "
                "WHERE account_id = $1 AND status = 'open'",
                account_id,
            )
            return load.done() >= 24 and open_per_node == 2

        await until(under_way, "requests at both cores")
        load.phase = "after"
        assert await stopping.stop() == 0

        async def answered_after() -> bool:
            return load.done("after") >= 24

        await until(answered_after, "24 answers after the stop")
    finally:
        await load.stop()
    failures = load.failures()
    assert not failures, failures[:5]
    await cluster.settled(account_id)
    holds = await cluster.db.fetch(
        "SELECT request_id, status, charged_nanos FROM credit_holds WHERE account_id = $1",
        account_id,
    )
    # One hold per request, settled, charged: nothing was resent or lost.
    assert len(holds) == len(load.outcomes)
    assert {h["request_id"] for h in holds} == {o.request_id for o in load.outcomes}
    assert all(h["status"] == "settled" and h["charged_nanos"] > 0 for h in holds)
    debited = await cluster.db.fetchval(
        "SELECT sum(amount_nanos) FROM ledger_entries WHERE debit_account = $1 AND kind = 'usage'",
        account_id,
    )
    assert debited == sum(h["charged_nanos"] for h in holds)
