"""Operations: request logs with content, metrics, readiness when the database goes away, and a
graceful stop in the middle of streams."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg
import grpc
import httpx
import orjson
import pytest

from kyma.admin.v1 import admin_service_pb2
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc
from tests.conftest import ISSUED_KEYS, running_kyma, write_catalog  # type: ignore[import-not-found]
from tests.fakes.postgres import fresh_database, psql
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"


async def logged(kyma, request_id: str, timeout: float = 30.0):  # liveness: a flush is 0.5 s
    deadline = time.monotonic() + timeout
    while True:
        reply = await kyma.admin(
            "ListRequestLogs", admin_service_pb2.ListRequestLogsRequest(request_id=request_id)
        )
        if reply.logs:
            return reply.logs[0]
        assert time.monotonic() < deadline, f"no log row for {request_id}"
        await asyncio.sleep(0.1)


async def test_logs_hold_content_for_plain_and_streamed_requests(kyma, account) -> None:
    account_id, key = account
    auth = {"authorization": f"Bearer {key}"}
    question = {
        "model": "test-model",
        "messages": [{"role": "user", "content": "What is a ledger?"}],
        "max_tokens": 6,
    }
    async with kyma.http() as http:
        plain = await http.post(CHAT, json=question, headers=auth)
        async with http.stream(
            "POST", CHAT, json={**question, "stream": True}, headers=auth
        ) as streamed:
            text_parts = [
                orjson.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                async for line in streamed.aiter_lines()
                if line.startswith("data: {") and '"choices":[{' in line
            ]
        refused = await http.post(CHAT, json={**question, "model": "nope"}, headers=auth)
    row = await logged(kyma, plain.headers["x-request-id"])
    assert row.status == "ok" and row.account_id == account_id and row.key_id.startswith("key_")
    assert row.deployment == "upstream-a" and row.model == "test-model"
    assert "What is a ledger?" in row.request_body
    assert plain.json()["choices"][0]["message"]["content"] in row.response_body
    assert row.completion_tokens == 6 and row.cost.nanos > 0

    row = await logged(kyma, streamed.headers["x-request-id"])
    assert row.stream and row.response_body == "".join(text_parts) and row.ttft_ms > 0
    row = await logged(kyma, refused.headers["x-request-id"])
    assert row.status == "MODEL_NOT_FOUND"

    everything = await kyma.admin(
        "ListRequestLogs", admin_service_pb2.ListRequestLogsRequest(limit=1000)
    )
    dumped = str(everything)
    assert not any(issued in dumped for issued in ISSUED_KEYS)
    assert "sk-upstream-secret" not in dumped


async def test_admin_logs_cli_and_purge_dry_run(kyma, account) -> None:
    _, key = account
    async with kyma.http() as http:
        reply = await http.post(
            CHAT,
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            headers={"authorization": f"Bearer {key}"},
        )
    await logged(kyma, reply.headers["x-request-id"])
    code, out, _ = await kyma_cli(
        kyma, "admin", "logs", "list", "--request-id", reply.headers["x-request-id"], "--content"
    )
    assert code == 0 and reply.headers["x-request-id"] in out and "request:" in out
    code, out, _ = await kyma_cli(kyma, "admin", "logs", "purge", "--dry-run")
    assert code == 0 and "would remove 0 request logs" in out


async def test_metrics_endpoint(kyma, account) -> None:
    _, key = account
    async with kyma.http() as http:
        await http.post(
            CHAT,
            json={
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            headers={"authorization": f"Bearer {key}"},
        )
        metrics = await http.get(f"http://127.0.0.1:{kyma.core.metrics_port}/metrics")
    body = metrics.text
    for name in (
        "kyma_requests_total",
        "kyma_request_duration_seconds_bucket",
        "kyma_tokens_total",
        "kyma_cost_nanodollars_total",
        "kyma_breaker_state",
        "kyma_ratelimit_decisions_total",
        "kyma_request_log_pending",
        "kyma_request_log_dropped",
        "kyma_ratelimit_shared",
        "kyma_holds_total",
    ):
        assert name in body, name
    assert 'status="ok"' in body


async def test_log_buffer_overflow_never_fails_requests(upstream, tmp_path, pg_url) -> None:
    """The request log table is locked for as long as the test says (not for a fixed time the
    requests must beat): the buffer fills to its capacity by count, and every request past it
    is served and its entry dropped."""
    generous = [
        {"tier": 0, "min_purchased_usd": "0", "rpm": 10_000, "model_rpm": 10_000, "tpm": 10**9}
    ]
    capacity, requests = 100, 300
    async with running_kyma(
        tmp_path, pg_url, upstream, "postgres", tiers=generous, log_buffer_capacity=capacity
    ) as kyma:
        _, key = await kyma.create_account()
        log = kyma.core.request_log
        blocker = await asyncpg.connect(pg_url)
        try:
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE request_logs IN ACCESS EXCLUSIVE MODE")
            body = {
                "model": "test-model",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
            async with httpx.AsyncClient(
                base_url=kyma.http_url, timeout=30, limits=httpx.Limits(max_connections=20)
            ) as http:
                replies = await asyncio.gather(
                    *(
                        http.post(CHAT, json=body, headers={"authorization": f"Bearer {key}"})
                        for _ in range(requests)
                    )
                )
            assert all(r.status_code == 200 for r in replies)
            # Nothing got past the lock: the buffer holds its capacity, the rest was dropped.
            assert (log.written, log.pending, log.dropped) == (0, capacity, requests - capacity)
            async with httpx.AsyncClient() as http:
                metrics = (
                    await http.get(f"http://127.0.0.1:{kyma.core.metrics_port}/metrics")
                ).text
            [dropped] = [
                float(line.split()[1])
                for line in metrics.splitlines()
                if line.startswith("kyma_request_log_dropped ")
            ]
            assert dropped == requests - capacity
        finally:
            await blocker.close()  # ends the transaction, and the lock with it
        deadline = time.monotonic() + 30  # liveness only
        while log.pending:
            assert time.monotonic() < deadline, "the buffer was not written after the lock"
            await asyncio.sleep(0.05)
        assert (log.written, log.dropped) == (capacity, requests - capacity)


async def test_readyz_follows_the_database(upstream, tmp_path) -> None:
    # A database of its own: every connection to it is cut, and the session's cores use theirs.
    with fresh_database("kyma_readyz") as url:
        database = url.rsplit("/", 1)[1]
        async with (
            running_kyma(tmp_path, url, upstream, "postgres") as kyma,
            kyma.http() as http,
        ):
            assert (await http.get("/readyz")).status_code == 200
            kyma.core.engine.sync_engine.pool.dispose()
            psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            psql(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
            )
            try:
                deadline = time.monotonic() + 30  # liveness only
                while (reply := await http.get("/readyz")).status_code != 503:
                    assert time.monotonic() < deadline, (
                        "readyz did not notice the database going away"
                    )
                    await asyncio.sleep(0.2)
                assert reply.json()["core"] == "unavailable"
            finally:
                psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            deadline = time.monotonic() + 30  # liveness only
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "readyz did not recover"
                await asyncio.sleep(0.2)


async def test_sigterm_drains_streams_settles_holds_and_flushes_logs(upstream, tmp_path) -> None:
    """`kyma serve core` as its own process: SIGTERM in the middle of 20 streams lets them all
    finish within the grace period, settles every hold and writes every log row."""
    await upstream.control(tokens_per_second=10)  # 2 s a stream: still under way at SIGTERM
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KYMA_")},
        "KYMA_DATA_DIR": str(tmp_path),
        "KYMA_GRPC_PORT": "0",
        "KYMA_METRICS_PORT": "0",
        "KYMA_ADMIN_TOKEN": "admin-token",
        "KYMA_CATALOG": str(write_catalog(tmp_path / "catalog.yaml", upstream)),
        "KYMA_TEST_UPSTREAM_KEY": "sk-upstream-secret",
        "KYMA_SHUTDOWN_GRACE_SECONDS": "10",
    }
    core = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core_service.cli.main",
        "serve",
        "core",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = (await asyncio.wait_for(core.stdout.readline(), 30)).decode()
        target = line.strip().rsplit(" ", 1)[1]
        async with grpc.aio.insecure_channel(target) as channel:
            created = await pb_admin_stub(channel).CreateAccount(
                admin_service_pb2.CreateAccountRequest(email="drain@example.com"),
                metadata=(("authorization", "Bearer admin-token"),),
            )
            stub = pb_grpc.InferenceServiceStub(channel)
            body = orjson.dumps(
                {
                    "model": "test-model",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 20,
                }
            )
            metadata = (("authorization", f"Bearer {created.api_key_secret}"),)

            under_way: set[int] = set()
            all_under_way = asyncio.Event()

            async def stream(number: int) -> int:
                chunks = 0
                async for message in stub.StreamChatCompletion(
                    pb.StreamChatCompletionRequest(body=body), metadata=metadata
                ):
                    chunks += len(message.chunks)
                    under_way.add(number)
                    if len(under_way) == 20:
                        all_under_way.set()
                return chunks

            streams = [asyncio.create_task(stream(n)) for n in range(20)]
            # SIGTERM once every stream has had its first chunk (not after a fixed wait that a
            # slow machine may not have started them all in); liveness bound only.
            await asyncio.wait_for(all_under_way.wait(), 30)
            core.send_signal(signal.SIGTERM)
            results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 30)
        assert all(isinstance(r, int) and r >= 21 for r in results), (
            results
        )  # role + 20 tokens (+ end)
        assert await asyncio.wait_for(core.wait(), 30) == 0
    finally:
        if core.returncode is None:
            core.kill()
            await core.wait()
    import sqlite3

    db = sqlite3.connect(tmp_path / "kyma.db")
    try:
        assert (
            db.execute("SELECT count(*) FROM credit_holds WHERE status = 'open'").fetchone()[0] == 0
        )
        assert (
            db.execute("SELECT count(*) FROM credit_holds WHERE status = 'settled'").fetchone()[0]
            == 20
        )
        assert db.execute("SELECT count(*) FROM request_logs WHERE stream").fetchone()[0] == 20
    finally:
        db.close()


def pb_admin_stub(channel):  # type: ignore[no-untyped-def]
    from kyma.admin.v1 import admin_service_pb2_grpc

    return admin_service_pb2_grpc.AdminServiceStub(channel)
