"""`kyma serve` with two workers (KYMA_WORKERS=2) on the embedded default: one small parent, two
cores and two bridges as real processes on one SQLite database, limits counted in the workers'
shared SQLite file. Through the one HTTP port: every core serves, a rate limit of 7 admits
exactly 7 whichever cores and bridges the requests reach, a small balance pays for exactly
the requests it affords and never goes negative, SIGTERM drains and stops everything, and a
worker that dies stops the rest loudly.

Every wait is for an event (a line, an answer, an exit) under a generous liveness bound;
nothing is asserted about how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import secrets
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import create_async_engine

from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from tests.conftest import ISSUED_KEYS, UPSTREAM_KEY, Upstream
from tests.fakes.cluster import spawn_kyma
from tests.fakes.processes import stop_process

LIVENESS = 180.0  # start-up of four processes on a busy two-core machine
ADMIN = "admin-token-workers"
TIERS = [
    {"tier": 0, "min_purchased_usd": "0", "rpm": 100_000, "model_rpm": 100_000, "tpm": 10**10},
    {"tier": 1, "min_purchased_usd": "1000000", "rpm": 7, "model_rpm": 7, "tpm": 10**10},
]
# Output only: a hold (max_tokens × the output price) is then exactly what the answer costs
# (the test upstream answers max_tokens tokens), so what a balance affords does not depend on
# which requests overlap.
OUT_NANOS = 2_000
MAX_TOKENS = 10
COST = MAX_TOKENS * OUT_NANOS


def catalog(path: pathlib.Path, upstream: Upstream) -> pathlib.Path:
    path.write_text(
        f"""
models:
  - name: test-model
    owned_by: kyma-tests
    max_output_tokens: 2048
    context_window: 131072
    price: {{input_per_million: "0", output_per_million: "2.00"}}
    deployments:
      - name: upstream-a
        base_url: {upstream.base_url}
        model: upstream-model
        api_key_env: KYMA_TEST_UPSTREAM_KEY
        timeouts: {{connect: 2, first_token: 5, idle: 10, total: 60}}
  - name: kyma-demo
    deployments:
      - base_url: demo://local/v1
        model: kyma-demo
"""
    )
    return path


def children(parent: int) -> set[int]:
    found = set()
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def serve_env(data_dir: pathlib.Path, **settings: str) -> dict[str, str]:
    """This machine's environment without its KYMA_ settings, two workers, then `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYMA_")}
    return env | {"KYMA_WORKERS": "2", "KYMA_DATA_DIR": str(data_dir), **settings}


@dataclass
class Serving:
    process: asyncio.subprocess.Process
    url: str
    cores: list[str]
    data_dir: pathlib.Path
    stderr: pathlib.Path
    workers: set[int]

    async def account(self, credit_usd: str, *, tier: int | None = None) -> tuple[str, str]:
        auth = (("authorization", f"Bearer {ADMIN}"),)
        async with grpc.aio.insecure_channel(self.cores[0]) as channel:
            admin = admin_service_pb2_grpc.AdminServiceStub(channel)
            created = await admin.CreateAccount(
                admin_service_pb2.CreateAccountRequest(
                    email=f"w-{secrets.token_hex(5)}@example.com"
                ),
                metadata=auth,
            )
            ISSUED_KEYS.add(created.api_key_secret)
            await admin.AdjustCredits(
                admin_service_pb2.AdjustCreditsRequest(
                    account_id=created.account.id, amount_usd=credit_usd, reason="t", actor="t"
                ),
                metadata=auth,
            )
            if tier is not None:
                await admin.PinTier(
                    admin_service_pb2.PinTierRequest(account_id=created.account.id, tier=tier),
                    metadata=auth,
                )
        return created.account.id, created.api_key_secret

    def query(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(self.data_dir / "kyma.db", timeout=30)) as db:
            return db.execute(sql, args).fetchall()

    async def verify_ledger(self) -> None:
        """The suite's ledger check (tests/conftest.py), on the workers' database."""
        await self.settled()
        engine = create_async_engine(f"sqlite+aiosqlite:///{self.data_dir / 'kyma.db'}")
        try:
            report = await verify_ledger(engine, SystemClock())
        finally:
            await engine.dispose()
        assert report.ok, "ledger check failed:\n" + "\n".join(report.problems)

    async def settled(self, account_id: str | None = None) -> None:
        for _ in range(int(LIVENESS / 0.05)):
            open_holds = self.query(
                "SELECT count(*) FROM credit_holds WHERE status = 'open'"
                + (" AND account_id = ?" if account_id else ""),
                *([account_id] if account_id else []),
            )
            if open_holds[0][0] == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("holds still open")


@contextlib.asynccontextmanager
async def kyma_serve(directory: pathlib.Path, upstream: Upstream) -> AsyncIterator[Serving]:
    """`kyma serve` with two workers on free ports; SIGTERM (then SIGKILL of the whole tree)
    at exit."""
    directory.mkdir(parents=True, exist_ok=True)
    env = serve_env(
        directory / "data",
        KYMA_HTTP_PORT="0",
        KYMA_GRPC_PORT="0",
        KYMA_METRICS_PORT="0",
        KYMA_BRIDGE_METRICS_PORT="0",
        KYMA_ADMIN_TOKEN=ADMIN,
        KYMA_CATALOG=str(catalog(directory / "catalog.yaml", upstream)),
        KYMA_TEST_UPSTREAM_KEY=UPSTREAM_KEY,
        KYMA_TIERS=json.dumps(TIERS),
        KYMA_WELCOME_BONUS_USD="0",
        KYMA_DEMO_TOKENS_PER_SECOND="20",
    )
    stderr = directory / "serve.log"
    with stderr.open("ab") as log:
        process = await spawn_kyma(env, stderr=log)
    workers: set[int] = set()
    try:
        assert process.stdout is not None
        cores: list[str] = []
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), LIVENESS)).decode()
            assert line, f"kyma serve ended before serving:\n{stderr.read_text()}"
            if line.startswith("kyma core listening on "):
                cores.append(line.split()[-1])
            if line.startswith("kyma serving on "):
                url = line.split()[3]
                break
        workers = children(process.pid)
        yield Serving(process, url, cores, directory / "data", stderr, workers)
    finally:
        await stop_process(process, LIVENESS)
        for pid in workers | children(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest_asyncio.fixture(scope="module")
async def served(
    upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Serving]:
    """Shared by the tests below; its ledger is checked at the end (tests/conftest.py's check,
    which runs for its own `kyma` fixture, on this database)."""
    async with kyma_serve(tmp_path_factory.mktemp("workers"), upstream) as serving:
        yield serving
        await serving.verify_ledger()


def body(n: int = 0) -> dict[str, object]:
    return {
        "model": "test-model",
        "messages": [{"role": "user", "content": f"hi {n}"}],
        "max_tokens": MAX_TOKENS,
    }


async def test_a_small_parent_two_cores_and_two_bridges(served: Serving) -> None:
    assert len(served.workers) == 4 and len(set(served.cores)) == 2
    # The parent has imported nothing of Kyma's serving code, nor its libraries.
    maps = pathlib.Path(f"/proc/{served.process.pid}/maps").read_text()
    assert "grpc" not in maps and "pydantic_core" not in maps and "sqlalchemy" not in maps
    async with httpx.AsyncClient(base_url=served.url, timeout=LIVENESS) as http:
        ready = await http.get("/readyz")
        assert ready.json()["status"] == "ready", ready.text
        # The workers share their limits through the machine's SQLite file: "local", not the
        # "per-node" of a cluster whose Redis is away.
        assert ready.json()["rate_limits"] == "local"
        # Both cores answer requests through the one port.
        account_id, key = await served.account("1")
        auth = {"authorization": f"Bearer {key}"}
        nodes: set[object] = set()
        for n in range(200):
            reply = await http.post("/v1/chat/completions", json=body(n), headers=auth)
            assert reply.status_code == 200, reply.text
            await served.settled(account_id)
            [(node,)] = served.query(
                "SELECT node_id FROM credit_holds WHERE request_id = ?",
                reply.headers["x-request-id"],
            )
            nodes.add(node)
            if len(nodes) == 2:
                break
    assert len(nodes) == 2


async def test_a_rate_limit_admits_exactly_its_limit_across_the_workers(served: Serving) -> None:
    """7 requests a minute; 21 at once over every bridge and core: exactly 7 answered."""
    account_id, key = await served.account("1", tier=1)
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=served.url, timeout=LIVENESS) as http:
        replies = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body(n), headers=auth) for n in range(21))
        )
    statuses = Counter(reply.status_code for reply in replies)
    assert statuses == {200: 7, 429: 14}, statuses
    for reply in replies:
        if reply.status_code == 429:
            assert reply.json()["error"]["code"] == "rate_limit_exceeded"
    assert (served.data_dir / "ratelimit.db").exists()
    await served.settled(account_id)


async def test_a_small_balance_pays_for_exactly_what_it_affords(served: Serving) -> None:
    """A balance of 7 requests and a half; 40 at once, spread over both cores by the bridges'
    round robin (each core decides its holds in SQLite write transactions): exactly 7 answered
    and charged, the rest refused with 402, never a negative balance."""
    affords = 7
    balance_nanos = affords * COST + COST // 2
    account_id, key = await served.account(f"{balance_nanos / 10**9:.9f}")
    auth = {"authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=served.url, timeout=LIVENESS) as http:
        replies = await asyncio.gather(
            *(http.post("/v1/chat/completions", json=body(n), headers=auth) for n in range(40))
        )
        statuses = Counter(reply.status_code for reply in replies)
        assert statuses == {200: affords, 402: 40 - affords}, statuses
        charged = sum(
            reply.json()["usage"]["completion_tokens"] * OUT_NANOS
            for reply in replies
            if reply.status_code == 200
        )
        assert charged == affords * COST
        await served.settled(account_id)
        view = (await http.get("/v1/account", headers=auth)).json()
    assert view["held_usd"] == "0.000000000"
    assert view["balance_usd"] == f"{(balance_nanos - charged) / 10**9:.9f}"


async def test_sigterm_drains_then_stops_every_worker(
    upstream: Upstream, tmp_path: pathlib.Path
) -> None:
    async with kyma_serve(tmp_path, upstream) as kyma:
        _, key = await kyma.account("1")
        async with httpx.AsyncClient(base_url=kyma.url, timeout=LIVENESS) as http:
            request = {**body(), "model": "kyma-demo", "max_tokens": 40, "stream": True}
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                json=request,
                headers={"authorization": f"Bearer {key}"},
            ) as stream:
                lines = stream.aiter_lines()
                async for line in lines:
                    if line.startswith("data: "):
                        break
                # Mid-stream: stop the whole thing.
                kyma.process.send_signal(signal.SIGTERM)
                rest = [line async for line in lines]
        assert "data: [DONE]" in rest  # the stream in flight was finished, not cut
        assert await asyncio.wait_for(kyma.process.wait(), LIVENESS) == 0
        assert not [pid for pid in kyma.workers if alive(pid)]


async def test_a_dead_worker_stops_the_others_loudly(
    upstream: Upstream, tmp_path: pathlib.Path
) -> None:
    async with kyma_serve(tmp_path, upstream) as kyma:
        victim = max(kyma.workers)
        os.kill(victim, signal.SIGKILL)
        assert await asyncio.wait_for(kyma.process.wait(), LIVENESS) == 1
        log = kyma.stderr.read_text()
        assert re.search(rf"(core|bridge) worker \d \(pid {victim}\) was killed by signal 9", log)
        assert "stopping the other workers" in log
        assert not [pid for pid in kyma.workers if alive(pid)]


async def test_a_second_kyma_on_the_same_port_fails_instead_of_sharing_it(
    served: Serving, tmp_path: pathlib.Path
) -> None:
    """The bridges share their port through SO_REUSEPORT, and so could another process's
    sockets: the first worker checks the port with a plain bind before it opens them."""
    port = served.url.rsplit(":", 1)[1]
    env = serve_env(
        tmp_path / "data",
        KYMA_HTTP_PORT=port,
        KYMA_GRPC_PORT="0",
        KYMA_METRICS_PORT="0",
        KYMA_BRIDGE_METRICS_PORT="0",
    )
    second = await spawn_kyma(env)
    try:
        out, err = await asyncio.wait_for(second.communicate(), LIVENESS)
    finally:
        if second.returncode is None:
            second.kill()
            await second.wait()
    assert second.returncode == 1
    assert b"Address already in use" in err and b"kyma serving" not in out
    async with httpx.AsyncClient(base_url=served.url, timeout=LIVENESS) as http:
        assert (await http.get("/readyz")).json()["status"] == "ready"


async def test_bridges_alone_serve_with_two_workers(
    served: Serving, tmp_path: pathlib.Path
) -> None:
    """`kyma serve bridge` with KYMA_WORKERS=2 (bridge machines of a cluster, and the bench's
    --workers): both bridges start and the parent says it serves (it once waited for a core
    of its own that a bridge-only parent never starts), and requests pass through them."""
    env = serve_env(
        tmp_path / "data",
        KYMA_HTTP_PORT="0",
        KYMA_BRIDGE_METRICS_PORT="0",
        KYMA_CORE_ADDRESS=",".join(served.cores),
    )
    bridges = await spawn_kyma(env, "bridge", stderr=asyncio.subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        assert bridges.stdout is not None
        while True:
            line = (await asyncio.wait_for(bridges.stdout.readline(), LIVENESS)).decode()
            assert line, "kyma serve bridge ended before serving"
            if line.startswith("kyma serving on "):
                url = line.split()[3]
                assert "with 2 workers" in line
                break
        workers = children(bridges.pid)
        assert len(workers) == 2
        _, key = await served.account("1")
        async with httpx.AsyncClient(base_url=url, timeout=LIVENESS) as http:
            replies = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json=body(n),
                        headers={"authorization": f"Bearer {key}"},
                    )
                    for n in range(8)
                )
            )
        assert [reply.status_code for reply in replies] == [200] * 8
        bridges.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bridges.wait(), LIVENESS) == 0
    finally:
        if bridges.returncode is None:
            bridges.kill()
            await bridges.wait()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
