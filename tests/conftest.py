"""Shared fixtures: real servers on loopback, started once per session.

- `upstream`: `kyma test-upstream` as a real subprocess (fault injection through /_control).
- `pg_url`: a fresh PostgreSQL database on 127.0.0.1:5432, dropped at the end.
- `kyma`: the real core (grpc.aio on port 0) and the real bridge (uvicorn on port 0) in this
  event loop, on SQLite and on PostgreSQL (parametrized), with a catalogue that routes
  `test-model` (and `test-model-cached`, with prompt-cache prices and declared capabilities) to
  the test upstream as chat-only deployments (other dialects translated), `native-model` to it as
  a deployment that speaks Responses and Messages natively, beside the built-in demo model.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import logging
import pathlib
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import grpc
import httpx
import openai
import pytest
import pytest_asyncio
import uvicorn
from hypothesis import settings as hypothesis_settings
from sqlalchemy import func, select

from core_service.billing.ledger import BalanceView
from core_service.billing.verify import verify_ledger
from core_service.clock import SystemClock
from core_service.composition import Core, build_core
from core_service.db.models import CreditHold
from core_service.logging_setup import quiet_libraries
from core_service.settings import Settings
from http_bridge.app import create_app
from http_bridge.serve import server_config
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from tests.costs import CostRecorder
from tests.fakes.postgres import fresh_database

# Property tests are judged by what each example does, never by how long it took: Hypothesis's
# default 200 ms deadline per example fails them on a busy machine ("Unreliable test timings").
hypothesis_settings.register_profile("kyma", deadline=None)
hypothesis_settings.load_profile("kyma")

ADMIN_TOKEN = "kyadm_test_" + secrets.token_hex(8)
# Every API key the tests were given: none may ever appear in a log line (checked at the end).
ISSUED_KEYS: set[str] = set()
UPSTREAM_KEY = "sk-upstream-secret"


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot format is not a leak
            pass


@pytest.fixture(scope="session", autouse=True)
def no_key_in_any_log() -> Iterator[None]:
    """Record every log line of the session; at the end, no issued key may be in one."""
    recorder = _Recorder()
    recorder.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(recorder)
    root.setLevel(logging.INFO)  # what production runs with, under its library levels
    quiet_libraries()
    yield
    root.removeHandler(recorder)
    root.setLevel(previous)
    leaked = {
        key[:9] for key in ISSUED_KEYS | {UPSTREAM_KEY} for line in recorder.lines if key in line
    }
    assert not leaked, f"keys found in log output: {sorted(leaked)}"


@dataclass
class Upstream:
    url: str  # e.g. http://127.0.0.1:PORT
    process: subprocess.Popen[str]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    async def control(self, **changes: Any) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            reply = await client.post(f"{self.url}/_control", json=changes)
            reply.raise_for_status()
            return reply.json()

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.url}/_stats")).json()

    async def reset(self) -> None:
        async with httpx.AsyncClient() as client:
            await client.post(f"{self.url}/_stats/reset")
        await self.control(
            latency_ms=0,
            tokens_per_second=0,
            error_rate=0,
            rate_limit_rate=0,
            hang_rate=0,
            drop_stream_after=None,
            error_status=500,
            require_api_key=None,
            fail_on_text=None,
            overrun_tokens=0,
            omit_usage=False,
            cached_prompt_fraction=0,
            reasoning_fraction=0,
            reply_tokens=None,
            dialects=["chat", "messages", "responses"],
        )


def start_upstream(*args: str) -> Upstream:
    process = subprocess.Popen(
        [sys.executable, "-m", "core_service.cli.main", "test-upstream", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"test upstream did not start: {line!r}")
    return Upstream(url=line.rsplit(" ", 1)[1].strip(), process=process)


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    server = start_upstream()
    yield server
    server.process.terminate()
    server.process.wait(10)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of its own for this session on the local PostgreSQL, dropped at the end."""
    with fresh_database("kyma_test") as url:
        yield url


def write_catalog(path: pathlib.Path, upstream: Upstream) -> pathlib.Path:
    path.write_text(
        # Timeouts far above what any test's upstream takes, even with 200 requests at once on
        # a machine whose cores are busy with other work: a timeout here is a test's own choice
        # (a hanging upstream), never the machine's speed.
        f"""
models:
  - name: test-model
    owned_by: kyma-tests
    max_output_tokens: 2048
    context_window: 131072
    price: {{input_per_million: "1.00", output_per_million: "2.00"}}
    deployments:
      - name: upstream-a
        base_url: {upstream.base_url}
        model: upstream-model
        api_key_env: KYMA_TEST_UPSTREAM_KEY
        timeouts: {{connect: 5, first_token: 10, idle: 10, total: 60}}
  - name: native-model
    owned_by: kyma-tests
    max_output_tokens: 2048
    context_window: 131072
    price: {{input_per_million: "1.00", output_per_million: "2.00"}}
    deployments:
      - name: upstream-native
        base_url: {upstream.base_url}
        model: upstream-model
        api_key_env: KYMA_TEST_UPSTREAM_KEY
        dialects: [chat, responses, messages]
        timeouts: {{connect: 5, first_token: 10, idle: 10, total: 60}}
  - name: kyma-demo
    deployments:
      - base_url: demo://local/v1
        model: kyma-demo
  - name: test-model-cached
    owned_by: kyma-tests
    context_window: 65536
    max_output_tokens: 1024
    capabilities: {{tools: true, structured_outputs: true, vision: false, reasoning: true}}
    price:
      input_per_million: "1.00"
      cached_input_per_million: "0.25"
      cache_write_per_million: "1.25"
      output_per_million: "2.00"
    endpoints: [chat.completions, completions]
    deployments:
      - name: upstream-cached
        base_url: {upstream.base_url}
        model: upstream-model
        api_key_env: KYMA_TEST_UPSTREAM_KEY
        timeouts: {{connect: 5, first_token: 10, idle: 10, total: 60}}
"""
    )
    return path


def bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@dataclass
class Kyma:
    """A running core and bridge."""

    core: Core
    settings: Settings
    grpc_target: str
    http_url: str  # e.g. http://127.0.0.1:PORT
    backend: str
    upstream: Upstream
    channel: grpc.aio.Channel
    # Every answer its SDK clients got, with the cost it showed (checked against the ledger
    # after each test that uses the session's `kyma`).
    costs: CostRecorder = field(default_factory=CostRecorder)

    @property
    def base_url(self) -> str:
        return f"{self.http_url}/v1"

    async def create_account(self, email: str | None = None) -> tuple[str, str]:
        """A new account; returns (account id, API key)."""
        email = email or f"user-{secrets.token_hex(6)}@example.com"
        stub = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        reply = await stub.CreateAccount(
            admin_service_pb2.CreateAccountRequest(email=email),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
        )
        ISSUED_KEYS.add(reply.api_key_secret)
        return reply.account.id, reply.api_key_secret

    def mails_to(self, address: str) -> list[email.message.EmailMessage]:
        """Mails the file backend wrote to `address`, oldest first."""
        directory = self.settings.data_dir / "mail"
        found = []
        for path in sorted(directory.glob("*.eml")) if directory.exists() else []:
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if message["To"] == address:
                found.append(message)
        return found

    def last_code(self, address: str) -> str:
        body = self.mails_to(address)[-1].get_content()
        return re.search(r"code is (\d{6})", body).group(1)  # type: ignore[union-attr]

    def client(self, api_key: str, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK on this Kyma; its answers' costs are recorded (`costs`)."""
        kwargs.setdefault(
            "http_client", openai.DefaultAsyncHttpxClient(transport=self.costs.transport())
        )
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kwargs)

    def anthropic(self, api_key: str) -> anthropic.AsyncAnthropic:
        """Anthropic's official SDK on this Kyma; its answers' costs are recorded too."""
        return anthropic.AsyncAnthropic(
            base_url=self.http_url,
            api_key=api_key,
            max_retries=0,
            http_client=anthropic.DefaultAsyncHttpxClient(transport=self.costs.transport()),
        )

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.http_url, timeout=30)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until no hold is open and every settlement the core started has landed (a
        cancelled stream settles a moment after its client left). `timeout` is a liveness
        bound, not a measure of speed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.core.tasks.drain(timeout=timeout)
            await self.core.storage.writer.drain(timeout=timeout)
            async with self.core.storage.reads.connect() as conn:
                open_holds = await conn.scalar(
                    select(func.count()).select_from(CreditHold).where(CreditHold.status == "open")
                )
            if not open_holds and not self.core.tasks.pending:
                return
            assert asyncio.get_running_loop().time() < deadline, f"{open_holds} holds still open"
            await asyncio.sleep(0.02)

    async def account_changes_seen(self) -> None:
        """Let this core take in the account-event feed now (a tier pinned, an account
        suspended), instead of waiting for its next poll."""
        accounts = self.core.accounts
        for event in await accounts.events.poll():
            accounts.authenticator.apply(event)

    async def verify_ledger(self) -> None:
        await self.settled()
        report = await verify_ledger(self.core.engine, SystemClock())
        assert report.ok, "ledger check failed:\n" + "\n".join(report.problems)

    async def balance(self, account_id: str) -> BalanceView:
        await self.settled()
        return await self.core.ledger.balance(account_id)

    async def admin(self, method: str, message: Any) -> Any:
        stub = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        return await getattr(stub, method)(
            message, metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),)
        )


@contextlib.asynccontextmanager
async def running_kyma(
    tmp: pathlib.Path,
    database_url: str | None,
    upstream: Upstream,
    backend: str,
    *,
    clock: Any = None,
    sock: socket.socket | None = None,
    **overrides: Any,
) -> AsyncIterator[Kyma]:
    """A core and a bridge; the bridge serves on `sock` when given (bound beforehand, so that
    settings such as public_base_url can name its address)."""
    settings = Settings(
        data_dir=tmp,
        database_url=database_url,
        grpc_port=0,
        metrics_port=0,
        admin_token=ADMIN_TOKEN,
        catalog=overrides.pop("catalog", None) or write_catalog(tmp / "catalog.yaml", upstream),
        demo_tokens_per_second=0,
        shutdown_grace_seconds=2,
        **{
            "mail_url": f"file://{tmp / 'mail'}",
            # Every test signs up from 127.0.0.1: per-address limits get their own tests.
            "signups_per_ip_per_minute": 10_000,
            "verifications_per_ip_per_minute": 10_000,
            **overrides,
        },
    )
    core = await build_core(settings, clock=clock, environ={"KYMA_TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    port = await core.start()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    app = create_app(settings.model_copy(update={"core_address": target}))
    sock = sock or bound_socket()
    # Served as `kyma serve bridge` serves it (its HTTP bounds included), on our socket.
    server = uvicorn.Server(server_config(settings, app, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    http_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield Kyma(core, settings, target, http_url, backend, upstream, channel)
    finally:
        server.should_exit = True
        await serving
        await channel.close()
        await core.stop(grace=1)


@pytest_asyncio.fixture(scope="session", params=["sqlite", "postgres"])
async def kyma(
    request: pytest.FixtureRequest, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Kyma]:
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"kyma-{backend}")
    url = request.getfixturevalue("pg_url") if backend == "postgres" else None
    async with running_kyma(tmp, url, upstream, backend) as running:
        yield running


@pytest_asyncio.fixture
async def account(kyma: Kyma) -> tuple[str, str]:
    return await kyma.create_account()


@pytest_asyncio.fixture
async def client(kyma: Kyma, account: tuple[str, str]) -> AsyncIterator[openai.AsyncOpenAI]:
    async with kyma.client(account[1]) as sdk:
        yield sdk


@pytest_asyncio.fixture(autouse=True)
async def _fresh_upstream_and_ledger_check(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Tests that use the upstream start with no faults and zeroed counters; tests that use a
    running Kyma end with the ledger check (every balance equals its entries, every hold ended
    exactly once or still open) and the cost check (every usage.cost an SDK client was shown
    equals its ledger entries: tests/costs.py)."""
    if "upstream" in request.fixturenames:
        await request.getfixturevalue("upstream").reset()
    yield
    if "kyma" in request.fixturenames:
        kyma = request.getfixturevalue("kyma")
        await kyma.verify_ledger()
        # Every answer's usage.cost is what the ledger charged for it.
        await kyma.costs.check(kyma)
