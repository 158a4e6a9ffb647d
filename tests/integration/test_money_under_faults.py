"""Money under faults: the database killed in the middle of load and brought back, a core killed
in the middle of streams, and the whole money path through PgBouncer in transaction mode.

Every wait here is for an event (a count reached, a row changed) under a generous liveness
bound; nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import secrets
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from core_service.billing.hold_store import Batch
from core_service.billing.hold_store_postgres import PostgresHoldStore
from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from core_service.db.errors import is_unavailable
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.conftest import (  # type: ignore[import-not-found]
    ISSUED_KEYS,
    UPSTREAM_KEY,
    Upstream,
    running_kyma,
    write_catalog,
)
from tests.fakes.pg_cluster import PrivateCluster
from tests.fakes.pgbouncer import pgbouncer
from tests.fakes.postgres import asyncpg_url, fresh_database
from tests.fakes.processes import stop_process

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"
LIVENESS = 60.0  # seconds: how long an awaited event may take before the test gives up
# How long the database stays down, at least (not a bound on anything's speed).
OUTAGE_SECONDS = 8.0
# Limits out of the way: these tests are about money, not rate limits.
GENEROUS = [
    {"tier": 0, "min_purchased_usd": "0", "rpm": 100_000, "model_rpm": 100_000, "tpm": 10**10}
]


async def until(
    condition: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = LIVENESS
) -> None:
    """Wait for `condition` (a liveness bound, not a measure of speed)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.02)


def patient_catalog(path: pathlib.Path, upstream: Upstream) -> pathlib.Path:
    """The tests' catalogue with upstream timeouts no slow or busy machine trips: these tests
    are about money, and a timeout would be a speed threshold."""
    write_catalog(path, upstream)
    usual = path.read_text()
    patient = usual.replace(
        "timeouts: {connect: 5, first_token: 10, idle: 10, total: 60}",
        "timeouts: {connect: 30, first_token: 60, idle: 60, total: 300}",
    )
    assert patient != usual, "the tests' catalogue changed: update patient_catalog"
    path.write_text(patient)
    return path


async def usage_of(url: str, account_id: str) -> tuple[int, int]:
    """(how many usage entries debit the account, their sum in nano-dollars)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(amount_nanos), 0) AS total FROM ledger_entries "
            "WHERE kind = 'usage' AND debit_account = $1",
            account_id,
        )
    finally:
        await conn.close()
    return int(row["n"]), int(row["total"])


async def assert_ledger_verifies(url: str) -> None:
    engine = create_async_engine(asyncpg_url(url))
    try:
        report = await verify_ledger(engine, SystemClock())
    finally:
        await engine.dispose()
    assert report.ok, "ledger check failed:\n" + "\n".join(report.problems)


# --- the database killed in the middle of load ---------------------------------------------------


@dataclass
class Load:
    """What the clients got, phase by phase (the phase when each answer arrived)."""

    phase: str = "before"
    answers: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def ok(self, phase: str | None = None) -> int:
        return sum(
            n for (p, status), n in self.answers.items() if status == 200 and phase in (None, p)
        )

    def refused(self, phase: str) -> int:
        return self.answers[(phase, 503)]

    def sound(self) -> bool:
        """True while every answer so far was as it may be (a wait stops at the first that
        was not, rather than at its liveness bound)."""
        assert not self.unexpected, "\n".join(self.unexpected[:20])
        return True


async def test_database_killed_mid_load_then_back(upstream, tmp_path) -> None:
    """16 clients keep sending chat requests while the database is SIGKILLed and, a while later,
    started again. Every answer is a 200 or a 503 service_unavailable with Retry-After (never a
    500), and every 200 that reached a client is charged exactly once: requests admitted before
    the crash and answered during it are billed once the database is back."""
    clients = 16
    # Each request spends a while at the upstream, so that requests are in flight (admitted,
    # holding credit) when the database goes, and their settlements must wait for its return.
    await upstream.control(latency_ms=300)
    body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with PrivateCluster() as cluster:
        async with running_kyma(
            tmp_path,
            cluster.url,
            upstream,
            "postgres",
            tiers=GENEROUS,
            catalog=patient_catalog(tmp_path / "catalog.yaml", upstream),
        ) as kyma:
            account_id, key = await kyma.create_account()
            await kyma.admin(
                "AdjustCredits",
                admin_service_pb2.AdjustCreditsRequest(
                    account_id=account_id, amount_usd="100", reason="load test", actor="tests"
                ),
            )
            before = (await kyma.balance(account_id)).balance_nanos
            writer = kyma.core.storage.writer
            load = Load()
            stop = asyncio.Event()
            auth = {"authorization": f"Bearer {key}"}

            async def client(http: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    try:
                        reply = await http.post(CHAT, json=body, headers=auth)
                    except httpx.HTTPError as error:  # the bridge stays up: none expected
                        load.unexpected.append(f"{type(error).__name__}: {error}")
                        await asyncio.sleep(0.1)
                        continue
                    phase = load.phase
                    load.answers[(phase, reply.status_code)] += 1
                    if reply.status_code == 200:
                        continue
                    error = reply.json().get("error") or {}
                    if not (
                        reply.status_code == 503
                        and error.get("code") == "service_unavailable"
                        and reply.headers.get("retry-after")
                    ):
                        load.unexpected.append(
                            f"{phase}: {reply.status_code} {dict(reply.headers)} {reply.text[:300]}"
                        )
                    # A client told to retry waits a little (not the whole Retry-After: the
                    # test wants many tries while the database is away).
                    await asyncio.sleep(0.05)

            async with httpx.AsyncClient(
                base_url=kyma.http_url,
                timeout=LIVENESS,
                limits=httpx.Limits(max_connections=clients),
            ) as http:
                running = [asyncio.create_task(client(http)) for _ in range(clients)]
                try:
                    await until(
                        lambda: load.sound() and load.ok("before") >= 100,
                        "100 answers before the crash",
                    )
                    # Crash while requests are at the upstream: admitted, holds placed.
                    await until(
                        lambda: _in_flight_at(upstream, 4), "requests in flight at the upstream"
                    )
                    load.phase = "outage"
                    await asyncio.to_thread(cluster.kill)
                    crashed = time.monotonic()
                    # Long enough for every part to meet the outage: the writer (settlements
                    # queued and retried), admission (503s), heartbeats, expiry, health checks.
                    # And well past the upstream's 5 s keep-alive: no request reaches it now, so
                    # it closes the core's idle connections, and they must be closed before the
                    # load resumes (the core reusing one just as it closes gets a 503
                    # upstream_unavailable: a separate matter, not this test's).
                    await until(
                        lambda: (
                            load.sound()
                            and writer.failing
                            and load.refused("outage") >= 50
                            and time.monotonic() - crashed >= OUTAGE_SECONDS
                        ),
                        "the outage seen by the writer and the clients",
                    )
                    queued_in_outage = writer.depth
                    load.phase = "after"
                    await asyncio.to_thread(cluster.start)
                    await until(
                        lambda: load.sound() and load.ok("after") >= 100,
                        "100 answers after the restart",
                    )
                finally:
                    stop.set()
                    await asyncio.gather(*running)

            await kyma.settled(timeout=120)
            after = await kyma.balance(account_id)
            count, charged = await usage_of(cluster.url, account_id)
            await kyma.verify_ledger()

        assert not load.unexpected, "\n".join(load.unexpected[:20])
        assert cluster.kills == 1
        # Requests admitted before the crash were answered during it, and billed after it.
        assert load.ok("outage") >= 1, load.answers
        assert queued_in_outage >= 1 and writer.stats.failures >= 1
        assert load.refused("outage") >= 50
        # Every 200 is one usage entry; their sum is what left the balance; nothing is held.
        assert count == load.ok(), (count, load.answers)
        assert charged == before - after.balance_nanos > 0
        assert after.held_nanos == 0


async def _in_flight_at(upstream: Upstream, at_least: int) -> bool:
    return (await upstream.stats())["in_flight"] >= at_least


async def test_a_connection_whose_server_died_while_idle_is_an_outage_to_the_writer() -> None:
    """A dying server's FATAL reaches the writer's idle connection before its close does; the
    next batch on it fails in the client library's protocol state. That must reach the writer
    as an outage (retried until it lands), never as a batch the database refuses (dropped: a
    settlement lost, or a 500 for a place)."""
    with PrivateCluster() as cluster:
        store = PostgresHoldStore(cluster.url)
        try:
            await store.commit(Batch())  # the writer's connection, open and idle
            cluster.kill()  # holding the loop on purpose: the FATAL arrives, unread, meanwhile
            for _ in range(3):
                await asyncio.sleep(0)  # it is read; the close, most likely, not yet
            with pytest.raises(Exception) as failed:
                await store.commit(Batch())
            assert is_unavailable(failed.value), repr(failed.value)
            cluster.start()
            await store.commit(Batch())  # on a new connection
        finally:
            await store.close()


# --- a core killed in the middle of streams ------------------------------------------------------


@dataclass
class CoreProcess:
    process: asyncio.subprocess.Process
    target: str
    log: pathlib.Path


@contextlib.asynccontextmanager
async def core_process(data_dir: pathlib.Path, env: dict[str, str]) -> AsyncIterator[CoreProcess]:
    """`kyma serve core` as a process of its own; SIGTERM (or SIGKILL, if it lingers) at exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "core.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "core_service.cli.main",
            "serve",
            "core",
            env={**env, "KYMA_DATA_DIR": str(data_dir)},
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), LIVENESS)).decode()
        assert "listening on" in line, f"the core did not start: {line!r}\n{log.read_text()}"
        yield CoreProcess(process, line.strip().rsplit(" ", 1)[1], log)
    finally:
        await stop_process(process, LIVENESS)


@dataclass
class Stream:
    """One gRPC stream as its client saw it."""

    request_id: str
    chunks: int = 0
    completion_tokens: int | None = None  # from the last message's usage: it completed
    error: grpc.StatusCode | None = None


async def run_stream(
    stub: pb_grpc.InferenceServiceStub, body: bytes, key: str, stream: Stream
) -> None:
    metadata = (("authorization", f"Bearer {key}"), ("x-request-id", stream.request_id))
    try:
        async for message in stub.StreamChatCompletion(
            pb.StreamChatCompletionRequest(body=body), metadata=metadata
        ):
            stream.chunks += len(message.chunks)
            if message.HasField("usage"):
                stream.completion_tokens = message.usage.completion_tokens
    except grpc.aio.AioRpcError as error:
        stream.error = error.code()


@pytest.mark.postgres
async def test_killed_core_streams_are_settled_at_their_checkpoints(upstream, tmp_path) -> None:
    """Two cores on one database. Core A is SIGKILLed in the middle of 20 streams: core B, once
    A's lease lapses, ends each of A's holds exactly once, at its last checkpoint — what A had
    delivered at most a second before it died — while B's own streams run to their end."""
    tokens_per_second, max_tokens, on_a, on_b = 20, 200, 20, 3
    kill_at = 3 * tokens_per_second + tokens_per_second // 2  # chunks: some 3.5 s into each
    await upstream.control(tokens_per_second=tokens_per_second)  # 10 s a stream
    body = orjson.dumps(
        {
            "model": "test-model",
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": max_tokens,
        }
    )
    admin = (("authorization", "Bearer admin-token"),)
    with fresh_database("kyma_faults") as url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KYMA_")},
            "KYMA_DATABASE_URL": url,
            "KYMA_GRPC_PORT": "0",
            "KYMA_METRICS_PORT": "0",
            "KYMA_ADMIN_TOKEN": "admin-token",
            "KYMA_CATALOG": str(patient_catalog(tmp_path / "catalog.yaml", upstream)),
            "KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
            "KYMA_NODE_LEASE_SECONDS": "3",
            "KYMA_NODE_HEARTBEAT_SECONDS": "1",
            "KYMA_SHUTDOWN_GRACE_SECONDS": "20",
            "KYMA_TIERS": json.dumps(GENEROUS),
        }
        async with (
            core_process(tmp_path / "a", env) as a,
            core_process(tmp_path / "b", env) as b,
            grpc.aio.insecure_channel(a.target) as channel_a,
            grpc.aio.insecure_channel(b.target) as channel_b,
        ):
            created = await admin_service_pb2_grpc.AdminServiceStub(channel_a).CreateAccount(
                admin_service_pb2.CreateAccountRequest(email="crash@example.com"), metadata=admin
            )
            key = created.api_key_secret
            ISSUED_KEYS.add(key)
            tag = secrets.token_hex(4)
            streams_a = [Stream(f"a-{tag}-{n}") for n in range(on_a)]
            streams_b = [Stream(f"b-{tag}-{n}") for n in range(on_b)]
            stub_a = pb_grpc.InferenceServiceStub(channel_a)
            stub_b = pb_grpc.InferenceServiceStub(channel_b)
            tasks = [asyncio.create_task(run_stream(stub_a, body, key, s)) for s in streams_a]
            tasks += [asyncio.create_task(run_stream(stub_b, body, key, s)) for s in streams_b]

            db = await asyncpg.connect(url)
            try:
                ids_a = [s.request_id for s in streams_a]

                async def under_way() -> bool:
                    failed = [s for s in streams_a + streams_b if s.error is not None]
                    assert not failed, f"streams failed before the kill: {failed}"
                    if not all(s.chunks >= kill_at for s in streams_a):
                        return False
                    checkpointed = await db.fetchval(
                        "SELECT count(*) FROM credit_holds WHERE request_id = ANY($1::text[]) "
                        "AND checkpoint_completion_tokens > 0",
                        ids_a,
                    )
                    return bool(checkpointed == on_a)

                # Every stream on A is a few checkpoints in (and, most likely, between two).
                await until(under_way, "every stream on core A under way and checkpointed")
                received = {s.request_id: s.chunks for s in streams_a}
                a.process.kill()
                await a.process.wait()
                assert not any(s.completion_tokens for s in streams_a), "A's streams ended first"

                async def none_open() -> bool:
                    still = await db.fetchval(
                        "SELECT count(*) FROM credit_holds WHERE request_id = ANY($1::text[]) "
                        "AND status = 'open'",
                        ids_a,
                    )
                    return still == 0

                # Core B ends them once A's lease (3 s) lapses; the bound is liveness only.
                await until(none_open, "core B to end core A's holds")
                await asyncio.wait_for(asyncio.gather(*tasks), LIVENESS)
            finally:
                await db.close()
        # B has stopped (SIGTERM), its settlements written: the ledger is whole.
        db = await asyncpg.connect(url)
        try:
            holds = {
                row["request_id"]: row
                for row in await db.fetch(
                    "SELECT * FROM credit_holds WHERE request_id = ANY($1::text[])",
                    ids_a + [s.request_id for s in streams_b],
                )
            }
            entries = await db.fetch(
                "SELECT reference, idempotency_key, amount_nanos FROM ledger_entries "
                "WHERE kind = 'usage'"
            )
        finally:
            await db.close()
        await assert_ledger_verifies(url)

    by_hold: dict[str, list[asyncpg.Record]] = {}
    for entry in entries:
        by_hold.setdefault(entry["reference"], []).append(entry)
    assert len(holds) == on_a + on_b
    node_a = {holds[s.request_id]["node_id"] for s in streams_a}
    assert len(node_a) == 1 and None not in node_a
    for stream in streams_a:
        hold = holds[stream.request_id]
        assert stream.error is not None and stream.completion_tokens is None, stream
        assert hold["status"] == "expired", dict(hold)
        charged = min(hold["checkpoint_nanos"], hold["amount_nanos"])
        assert hold["charged_nanos"] == charged > 0, dict(hold)
        [entry] = by_hold[hold["id"]]  # one usage entry: the hold ended once
        assert entry["amount_nanos"] == charged
        assert entry["idempotency_key"] == f"usage:{hold['id']}"
        # The checkpoint is at most a second old: what the client had, less two seconds' worth.
        got = received[stream.request_id]
        assert hold["checkpoint_completion_tokens"] > 0
        assert hold["checkpoint_completion_tokens"] >= got - 2 * tokens_per_second, (
            got,
            dict(hold),
        )
        assert hold["checkpoint_completion_tokens"] <= max_tokens
    for stream in streams_b:
        hold = holds[stream.request_id]
        assert stream.error is None and stream.completion_tokens == max_tokens, stream
        assert stream.chunks >= max_tokens + 1, stream  # the role chunk, then every token
        assert hold["status"] == "settled" and hold["node_id"] not in node_a, dict(hold)
        [entry] = by_hold[hold["id"]]
        assert entry["amount_nanos"] == hold["charged_nanos"] > 0


# --- the money path through PgBouncer ------------------------------------------------------------


@pytest.mark.postgres
async def test_the_money_path_through_pgbouncer(upstream, tmp_path) -> None:
    """The core on PgBouncer in transaction mode (a server connection per transaction, so no
    prepared statement may outlive one): holds, settlements, streams, a key revocation and a
    balance read all work, and the ledger verifies."""
    with fresh_database("kyma_bouncer") as direct, pgbouncer(default_pool_size=5) as bouncer:
        database = direct.rsplit("/", 1)[1]
        async with running_kyma(
            tmp_path,
            bouncer.url(database),
            upstream,
            "postgres",
            database_pgbouncer=True,
            tiers=GENEROUS,
            catalog=patient_catalog(tmp_path / "catalog.yaml", upstream),
        ) as kyma:
            # What this test relies on: the core was told it is behind PgBouncer (without it,
            # prepared statements would be cached across transactions).
            assert kyma.core.settings.database_pgbouncer is True
            assert kyma.core.settings.database_url == bouncer.url(database)
            account_id, key = await kyma.create_account()
            before = (await kyma.balance(account_id)).balance_nanos

            async def plain(sdk: Any) -> int:
                reply = await sdk.chat.completions.create(
                    model="test-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
                assert reply.choices[0].message.content
                return int(reply.usage.completion_tokens)

            async def streamed(sdk: Any) -> int:
                stream = await sdk.chat.completions.create(
                    model="test-model",
                    messages=[{"role": "user", "content": "Tell me a story"}],
                    max_tokens=6,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                chunks = [chunk async for chunk in stream]
                assert chunks[-1].usage is not None
                return int(chunks[-1].usage.completion_tokens)

            async with kyma.client(key) as sdk:
                tokens = await asyncio.gather(
                    *(streamed(sdk) if n % 3 == 0 else plain(sdk) for n in range(30))
                )
            assert tokens == [6 if n % 3 == 0 else 5 for n in range(30)]

            auth = {"authorization": f"Bearer {key}"}
            async with kyma.http() as http:
                created = await http.post("/v1/account/keys", json={"name": "spare"}, headers=auth)
                assert created.status_code == 201, created.text
                spare = created.json()["key"]
                ISSUED_KEYS.add(spare)
                spare_auth = {"authorization": f"Bearer {spare}"}
                assert (await http.get("/v1/models", headers=spare_auth)).status_code == 200
                revoked = await http.delete(
                    f"/v1/account/keys/{created.json()['id']}", headers=auth
                )
                assert revoked.status_code == 200 and revoked.json()["revoked_at"]
                assert (await http.get("/v1/models", headers=spare_auth)).status_code == 401
                await kyma.settled()
                account = await http.get("/v1/account", headers=auth)
            assert account.status_code == 200
            after = await kyma.balance(account_id)
            assert account.json()["balance_usd"] == f"{Decimal(after.balance_nanos) / 10**9:.9f}"
            assert account.json()["held_usd"] == "0.000000000"
            count, charged = await usage_of(direct, account_id)
            assert count == 30 and charged == before - after.balance_nanos > 0
            await kyma.verify_ledger()

        # It all went through PgBouncer: its console counts the transactions of this database.
        stats = {row["database"]: row for row in bouncer.show("STATS")}
        assert int(stats[database]["total_xact_count"]) > 0, stats


# --- an answer is billed before it leaves the core ------------------------------------------------


async def test_answers_are_billed_before_the_core_releases_them(upstream, tmp_path) -> None:
    """The core (embedded SQLite) is SIGKILLed the moment 20 concurrent unary answers have
    reached their clients: a unary answer has no checkpoint to fall back on, so each must
    already be charged — its settlement committed before the answer left."""
    answers = 20
    body = orjson.dumps(
        {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    )
    data_dir = tmp_path / "core"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KYMA_")},
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
        "KYMA_ADMIN_TOKEN": "admin-token",
        "KYMA_CATALOG": str(patient_catalog(tmp_path / "catalog.yaml", upstream)),
        "KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
        "KYMA_TIERS": json.dumps(GENEROUS),
    }
    admin = (("authorization", "Bearer admin-token"),)
    tag = secrets.token_hex(4)
    ids = [f"billed-{tag}-{n}" for n in range(answers)]
    async with (
        core_process(data_dir, env) as core,
        grpc.aio.insecure_channel(core.target) as channel,
    ):
        created = await admin_service_pb2_grpc.AdminServiceStub(channel).CreateAccount(
            admin_service_pb2.CreateAccountRequest(email="billed@example.com"), metadata=admin
        )
        key = created.api_key_secret
        ISSUED_KEYS.add(key)
        stub = pb_grpc.InferenceServiceStub(channel)
        replies = await asyncio.gather(
            *(
                stub.CreateChatCompletion(
                    pb.CreateChatCompletionRequest(body=body),
                    metadata=(("authorization", f"Bearer {key}"), ("x-request-id", rid)),
                )
                for rid in ids
            )
        )
        core.process.kill()  # nothing more is written after this
        await core.process.wait()
    costs = {rid: reply.usage.cost_nanos for rid, reply in zip(ids, replies, strict=True)}
    assert all(cost > 0 for cost in costs.values()), costs
    # The core is dead: read its database file directly.
    with contextlib.closing(sqlite3.connect(data_dir / "kyma.db")) as db:
        rows = db.execute(
            f"SELECT request_id, status, charged_nanos FROM credit_holds "
            f"WHERE request_id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
    assert len(rows) == answers
    for request_id, status, charged in rows:
        assert status == "settled", (request_id, status)
        assert charged == costs[request_id], (request_id, charged, costs[request_id])
