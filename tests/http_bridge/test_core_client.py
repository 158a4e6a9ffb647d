"""The bridge's channel to several cores (`http_bridge/core_client.py`): calls spread over every
core, a core that dies takes no request with it that had not started streaming, charged once,
and a core that comes back is used again.

Every wait is for an event (a row in the database, a count of answers) under a generous
liveness bound; nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import uvicorn
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import create_async_engine

from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from core_service.settings import Settings
from http_bridge.app import create_app
from http_bridge.core_client import resendable, service_config
from http_bridge.serve import server_config
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from tests.conftest import ISSUED_KEYS, UPSTREAM_KEY, Kyma, Upstream, bound_socket, write_catalog
from tests.fakes.cluster import MixedLoad, Outcome, kyma_process
from tests.fakes.postgres import asyncpg_url, fresh_database
from tests.fakes.waiting import until

ADMIN = "admin-token-core-client"
GENEROUS = [
    {"tier": 0, "min_purchased_usd": "0", "rpm": 100_000, "model_rpm": 100_000, "tpm": 10**10}
]


def core_env(url: str, catalog: pathlib.Path, **extra: str) -> dict[str, str]:
    return {
        "KYMA_DATABASE_URL": url,
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
        "KYMA_ADMIN_TOKEN": ADMIN,
        "KYMA_BRIDGE_TOKEN": "bridge-token-core-client",
        "KYMA_CATALOG": str(catalog),
        "KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "KYMA_TIERS": json.dumps(GENEROUS),
        # A killed core's holds are ended by the other soon after (3 s lease).
        "KYMA_NODE_LEASE_SECONDS": "3",
        "KYMA_NODE_HEARTBEAT_SECONDS": "1",
        # Small pools: the PostgreSQL these tests share has other users.
        "KYMA_DATABASE_POOL_SIZE": "4",
        "KYMA_DATABASE_MAX_OVERFLOW": "4",
        **extra,
    }


@contextlib.asynccontextmanager
async def bridge(core_address: str, data_dir: pathlib.Path) -> AsyncIterator[str]:
    """The real bridge app on `core_address` (its own channel, as `kyma serve bridge` opens
    it), in this event loop; yields its URL."""
    settings = Settings(
        data_dir=data_dir, core_address=core_address, bridge_token="bridge-token-core-client"
    )
    sock = bound_socket()
    server = uvicorn.Server(server_config(settings, create_app(settings)))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving


async def holds_by_request(db: asyncpg.Connection, account_id: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for row in await db.fetch("SELECT * FROM credit_holds WHERE account_id = $1", account_id):
        found.setdefault(row["request_id"], []).append(row)
    return found


def test_the_channel_balances_with_health_checks_and_resends_only_reads() -> None:
    """What the channel asks of gRPC: round robin, each core health-checked, and a retry
    policy for reads only (an inference call is resent by the bridge's own rule)."""
    config = service_config()
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    [reads] = config["methodConfig"]
    names = {(n["service"], n.get("method")) for n in reads["name"]}
    assert ("kyma.accounting.v1.AccountingService", "GetAccount") in names
    assert ("kyma.routing.v1.RoutingService", None) in names
    assert not any("Inference" in service or "Billing" in service for service, _ in names)
    assert ("kyma.accounting.v1.SignupService", "GetTerms") in names
    assert not any(method and method.startswith("Create") for _, method in names)
    assert reads["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


async def test_the_cores_health_can_be_watched(kyma: Kyma) -> None:
    """Health-checked balancing streams each core's Health/Watch: the core's interceptors let
    a handler that writes with context.write through (it failed there once, and every core
    then looked unhealthy to the bridge)."""
    call = health_pb2_grpc.HealthStub(kyma.channel).Watch(health_pb2.HealthCheckRequest())
    try:
        first = await call.read()
    finally:
        call.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


class _Failed(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, trailers: tuple[tuple[str, Any], ...]) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "failed")


def test_only_a_call_no_core_answered_is_resent() -> None:
    assert resendable(_Failed(grpc.StatusCode.UNAVAILABLE, ()))
    # What gRPC answers for a call a stopping core had received but not begun.
    assert resendable(_Failed(grpc.StatusCode.CANCELLED, ()))
    # A core's own UNAVAILABLE (upstreams down after failover, database down) has a reason.
    assert not resendable(
        _Failed(grpc.StatusCode.UNAVAILABLE, (("grpc-status-details-bin", b"\x08\x0e"),))
    )
    assert not resendable(
        _Failed(grpc.StatusCode.CANCELLED, (("grpc-status-details-bin", b"\x08\x01"),))
    )
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert not resendable(_Failed(code, ()))


@pytest.mark.postgres
async def test_a_core_killed_mid_load_loses_no_request_that_had_not_started(
    upstream: Upstream, tmp_path: pathlib.Path
) -> None:
    """One bridge on two real cores (`kyma serve core`). Core A is SIGKILLed while requests are
    at it: every request whose stream had not started (every unary one, every stream not yet
    answered) still succeeds, on B; only streams A had started may end with an error event.
    Every answered request is charged once — the holds A left behind end charging what A
    delivered, which for a resent request is nothing. A started again on its port is used again."""
    # Requests spend a while at the upstream before their first byte: at any moment several
    # are at each core, admitted and holding credit, with nothing sent to the client yet.
    await upstream.control(latency_ms=300)
    catalog = write_catalog(tmp_path / "catalog.yaml", upstream)
    with fresh_database("kyma_channel") as url:
        db = await asyncpg.connect(url)
        try:
            env = core_env(url, catalog)
            async with kyma_process("core", tmp_path / "a", env) as a:
                [node_a] = [r["node_id"] for r in await db.fetch("SELECT node_id FROM core_nodes")]
                async with (
                    kyma_process("core", tmp_path / "b", env) as b,
                    bridge(f"{a.address},{b.address}", tmp_path / "bridge") as bridge_url,
                    grpc.aio.insecure_channel(b.address) as admin_channel,
                ):
                    admin = admin_service_pb2_grpc.AdminServiceStub(admin_channel)
                    auth = (("authorization", f"Bearer {ADMIN}"),)
                    created = await admin.CreateAccount(
                        admin_service_pb2.CreateAccountRequest(email="channel@example.com"),
                        metadata=auth,
                    )
                    account_id, key = created.account.id, created.api_key_secret
                    ISSUED_KEYS.add(key)
                    await admin.AdjustCredits(
                        admin_service_pb2.AdjustCreditsRequest(
                            account_id=account_id, amount_usd="50", reason="test", actor="t"
                        ),
                        metadata=auth,
                    )
                    before = await balance(db, account_id)
                    load = MixedLoad(bridge_url, key, workers=12)
                    load.start()
                    try:

                        async def both_cores_busy() -> bool:
                            assert not load.failures(), load.failures()[:5]
                            open_on_a = await db.fetchval(
                                "SELECT count(*) FROM credit_holds WHERE node_id = $1 "
                                "AND status = 'open'",
                                node_a,
                            )
                            nodes = await db.fetchval(
                                "SELECT count(DISTINCT node_id) FROM credit_holds"
                            )
                            return load.done() >= 24 and nodes == 2 and open_on_a >= 3

                        await until(both_cores_busy, "requests on both cores, some at A")
                        load.phase = "after"
                        await a.kill()

                        async def answered_after() -> bool:
                            return load.done("after") >= 24

                        await until(answered_after, "24 answers after the kill")
                    finally:
                        await load.stop()

                    async def all_ended() -> bool:
                        open_holds = await db.fetchval(
                            "SELECT count(*) FROM credit_holds WHERE status = 'open'"
                        )
                        return open_holds == 0

                    # B ends A's holds once A's lease (3 s) lapsed.
                    await until(all_ended, "every hold ended, A's by B")
                    holds = await holds_by_request(db, account_id)
                    charged = before - await balance(db, account_id)
                    check_outcomes(load.outcomes, holds, node_a)
                    await ledger_verifies(url)

                    # A started again on its port: the bridge uses it again.
                    port = a.address.rsplit(":", 1)[1]
                    env_again = {**env, "KYMA_GRPC_PORT": port}
                    async with kyma_process("core", tmp_path / "a2", env_again):
                        node_a2 = await db.fetchval(
                            "SELECT node_id FROM core_nodes WHERE node_id NOT IN "
                            "(SELECT DISTINCT node_id FROM credit_holds)"
                        )
                        again = MixedLoad(bridge_url, key, workers=4)
                        again.start()
                        try:

                            async def used_again() -> bool:
                                assert not again.failures(), again.failures()[:5]
                                return bool(
                                    await db.fetchval(
                                        "SELECT count(*) FROM credit_holds WHERE node_id = $1",
                                        node_a2,
                                    )
                                )

                            await until(used_again, "the restarted core to get requests")
                        finally:
                            await again.stop()
        finally:
            await db.close()

    usage = sum(h["charged_nanos"] or 0 for hs in holds.values() for h in hs)
    assert charged == usage > 0


def check_outcomes(outcomes: list[Outcome], holds: dict[str, list[Any]], node_a: str) -> None:
    """Every request succeeded but streams A had started; each is charged once."""
    resent = 0
    for outcome in outcomes:
        assert outcome.status == 200, outcome  # nothing was refused, not even at the kill
        assert outcome.request_id in holds, outcome
        mine = holds[outcome.request_id]
        if not outcome.complete:
            # Only a stream A had started (its 200 sent) may break; A's hold ends at what A
            # delivered.
            [hold] = mine
            assert outcome.stream and outcome.phase == "before" and hold["node_id"] == node_a
            assert hold["status"] == "expired", dict(hold)
            continue
        settled = [h for h in mine if h["status"] == "settled"]
        if not settled:
            # A answered it and died before its settlement landed: B ended the hold at its
            # last checkpoint, as it ends every open hold of a dead core.
            [hold] = mine
            assert hold["node_id"] == node_a and hold["status"] == "expired", dict(hold)
            continue
        # Answered: one hold charged; any other (on A, which died before answering) charged
        # nothing.
        assert len(settled) == 1 and settled[0]["charged_nanos"] > 0, [dict(h) for h in mine]
        others = [h for h in mine if h is not settled[0]]
        assert all(h["node_id"] == node_a and not h["charged_nanos"] for h in others), [
            dict(h) for h in mine
        ]
        resent += bool(others)
    # The kill caught requests at A before they answered, and they were answered by B.
    assert resent >= 1, "no request was at A when it died"


async def balance(db: asyncpg.Connection, account_id: str) -> int:
    return int(
        await db.fetchval(
            "SELECT coalesce(sum(CASE WHEN credit_account = $1 THEN amount_nanos ELSE 0 END), 0)"
            " - coalesce(sum(CASE WHEN debit_account = $1 THEN amount_nanos ELSE 0 END), 0)"
            " FROM ledger_entries WHERE $1 IN (credit_account, debit_account)",
            account_id,
        )
    )


async def ledger_verifies(url: str) -> None:
    engine = create_async_engine(asyncpg_url(url))
    try:
        report = await verify_ledger(engine, SystemClock())
    finally:
        await engine.dispose()
    assert report.ok, "ledger check failed:\n" + "\n".join(report.problems)
