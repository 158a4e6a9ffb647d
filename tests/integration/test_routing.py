"""Routing across several real upstreams: strategies, failover, ejection and re-admission, the
retry budget, and fast failure when a model has no healthy deployment."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
import pytest_asyncio

from tests.conftest import running_kyma, start_upstream  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock
from tests.fakes.pg_cluster import free_port

pytestmark = pytest.mark.asyncio

CHAT = "/v1/chat/completions"
GENEROUS = [
    {"tier": 0, "min_purchased_usd": "0", "rpm": 100_000, "model_rpm": 100_000, "tpm": 10**9}
]


@pytest.fixture(scope="module")
def upstreams():
    servers = [start_upstream() for _ in range(3)]
    yield servers
    for server in servers:
        server.process.terminate()
        server.process.wait(10)


def catalog_text(a, b, c) -> str:
    def deployment(name: str, url: str, weight: float = 1) -> str:
        # A first-token timeout far above a loaded machine's worst: only a hanging upstream
        # reaches it.
        return (
            f"      - {{name: {name}, base_url: '{url}', model: up-{name}, weight: {weight}, "
            f"timeouts: {{connect: 1, first_token: 2, idle: 2, total: 10}}}}\n"
        )

    return (
        "models:\n"
        "  - name: weighted\n    deployments:\n"
        + deployment("a", a.base_url, 3)
        + deployment("b", b.base_url, 1)
        + "  - name: least\n    strategy: least_outstanding\n    deployments:\n"
        + deployment("a", a.base_url)
        + deployment("b", b.base_url)
        + "  - name: fastest\n    strategy: lowest_latency\n    deployments:\n"
        + deployment("a", a.base_url)
        + deployment("b", b.base_url)
        + "  - name: pair\n    deployments:\n"
        + deployment("a", a.base_url)
        + deployment("c", c.base_url)
        + "  - name: refused\n    deployments:\n"
        + deployment("gone", f"http://127.0.0.1:{free_port()}/v1")
        + deployment("c", c.base_url)
        + "  - name: hanging\n    deployments:\n"
        + deployment("a", a.base_url)
        + deployment("c", c.base_url)
        + "  - name: lonely\n    deployments:\n"
        + deployment("a", a.base_url)
        + "  - name: trio\n    deployments:\n"
        + deployment("a", a.base_url)
        + deployment("b", b.base_url)
        + deployment("c", c.base_url)
    )


@contextlib.asynccontextmanager
async def routed_kyma(upstreams, upstream, tmp_path, **overrides):
    for server in upstreams:
        await server.reset()
    path = tmp_path / "routes.yaml"
    path.write_text(catalog_text(*upstreams))
    settings = {
        "tiers": GENEROUS,
        "breaker_cooldown_seconds": 0.5,
        "probe_interval_seconds": 0.2,
        "welcome_bonus_usd": "100",
        **overrides,
    }
    async with running_kyma(tmp_path, None, upstream, "sqlite", catalog=path, **settings) as kyma:
        # Several accounts, as a real deployment's traffic is: a deployment is ejected for
        # everyone only on failures of several accounts' requests.
        kyma.keys = [(await kyma.create_account())[1] for _ in range(3)]  # type: ignore[attr-defined]
        kyma.key = kyma.keys[0]  # type: ignore[attr-defined]
        yield kyma
        for server in upstreams:
            await server.reset()


@pytest_asyncio.fixture
async def routed(upstreams, upstream, tmp_path):
    async with routed_kyma(upstreams, upstream, tmp_path) as kyma:
        yield kyma


async def send(
    kyma, model: str, count: int, *, concurrency: int = 16, stream: bool = False
) -> list[httpx.Response]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "stream": stream,
    }
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=kyma.http_url, timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as http:
        keys = getattr(kyma, "keys", None) or [kyma.key]

        async def one(number: int) -> httpx.Response:
            key = keys[number % len(keys)]
            async with gate:
                return await http.post(CHAT, json=body, headers={"authorization": f"Bearer {key}"})

        return await asyncio.gather(*(one(number) for number in range(count)))


async def served(server) -> int:
    stats = await server.stats()
    return stats["requests_by_path"].get("/v1/chat/completions", 0)


def deployment_status(kyma, model: str, deployment: str):
    status = {
        (s.model, s.deployment): s for s in kyma.core.router.status(kyma.core.catalogue.models())
    }
    return status[(model, deployment)]


async def until_ejected(kyma, model: str, deployment: str) -> None:
    """Send rounds of 30 requests, every one of which must succeed, until the bad deployment
    is ejected for everyone. That takes failures from three accounts; the weighted pick sends
    each request to the bad deployment with probability one half, so one round leaves an
    account without a failure about once in a thousand runs (seen in CI) — a round more makes
    that a chance in a million, five rounds never in practice."""
    for _ in range(5):
        replies = await send(kyma, model, 30, concurrency=4)
        assert [r.status_code for r in replies] == [200] * 30
        if deployment_status(kyma, model, deployment).state.value != "closed":
            return
    raise AssertionError(f"{model}/{deployment} was never ejected")


async def test_weighted_split_within_statistical_bounds(routed, upstreams) -> None:
    a, b, _ = upstreams
    replies = await send(routed, "weighted", 1000, concurrency=32)
    assert all(r.status_code == 200 for r in replies)
    to_a, to_b = await served(a), await served(b)
    assert to_a + to_b == 1000
    # 3:1 weights: 750 expected, standard deviation 13.7; five of them either way.
    assert 680 <= to_a <= 820


async def test_least_outstanding_prefers_the_idle_upstream(routed, upstreams) -> None:
    """A's requests take two seconds, far longer than B's on any machine: with four requests
    in flight at a time, A gets one only while B has as many in flight as A, so A ends up with
    a few at most (an argument from counts, not from either upstream's speed)."""
    a, b, _ = upstreams
    await a.control(latency_ms=2000)
    replies = await send(routed, "least", 24, concurrency=4)
    assert all(r.status_code == 200 for r in replies)
    assert await served(b) >= 3 * await served(a)


async def test_lowest_latency_moves_traffic_to_the_fast_upstream(routed, upstreams) -> None:
    a, b, _ = upstreams
    # Far slower than any stall a loaded machine adds to b: one stalled reply from b must not
    # make it look slower than a (an unmeasured deployment is never measured again).
    await a.control(latency_ms=500)
    await send(routed, "fastest", 4, concurrency=1)  # both get measured
    before_a, before_b = await served(a), await served(b)
    await send(routed, "fastest", 30, concurrency=1)
    assert (await served(b) - before_b) >= 28 and (await served(a) - before_a) <= 2


@pytest.mark.parametrize("fault", ["errors", "refused", "timeouts"])
async def test_one_bad_upstream_costs_clients_nothing(routed, upstreams, fault: str) -> None:
    a, _, c = upstreams
    model = {"errors": "pair", "refused": "refused", "timeouts": "hanging"}[fault]
    if fault == "errors":
        await a.control(error_rate=1.0, error_status=500)
    if fault == "timeouts":
        await a.control(hang_rate=1.0)
    bad_name = "gone" if fault == "refused" else "a"
    await until_ejected(routed, model, bad_name)
    if fault != "refused":
        # Ejected after three failures: from then on it sees only the odd half-open trial.
        async with httpx.AsyncClient() as http:
            await http.post(f"{a.url}/_stats/reset")
        replies = await send(routed, model, 30, concurrency=4)
        assert [r.status_code for r in replies] == [200] * 30
        assert await served(a) <= 4
    bad = deployment_status(routed, model, bad_name)
    assert bad.state.value in ("open", "half_open") and bad.failures >= 3


async def test_ejected_upstream_is_probed_back_in(routed, upstreams) -> None:
    a, _, c = upstreams
    await a.control(error_rate=1.0, error_status=503)
    await send(routed, "pair", 10, concurrency=1)
    await a.control(error_rate=0)
    deadline = time.monotonic() + 30  # liveness only: normally well under a second
    while True:
        if deployment_status(routed, "pair", "a").state.value == "closed":
            break
        assert time.monotonic() < deadline, "not re-admitted"
        await asyncio.sleep(0.1)
    before = await served(a)
    await send(routed, "pair", 20, concurrency=1)
    assert await served(a) > before


async def test_only_deployment_down_fails_fast(upstreams, upstream, tmp_path) -> None:
    """Fast means without trying any upstream (not "in so many ms": speed is the benchmark's).
    The core's clock stands still, so the breaker cannot cool down to half-open however slowly
    the steps run."""
    clock = FrozenClock()
    async with routed_kyma(upstreams, upstream, tmp_path, clock=clock) as routed:
        a = upstreams[0]
        await a.control(error_rate=1.0, error_status=500)
        failed = await send(routed, "lonely", 3, concurrency=1)
        assert [r.status_code for r in failed] == [502, 502, 502]
        [fast] = await send(routed, "lonely", 1)
        assert fast.status_code == 503 and int(fast.headers["retry-after"]) >= 1
        assert fast.json()["error"]["code"] == "upstream_unavailable"
        # No attempt was made: the upstream saw only the three that failed, and the router
        # started no fourth try of the deployment.
        assert await served(a) == 3
        [lonely] = [
            s
            for s in routed.core.router.status(routed.core.catalogue.models())
            if s.model == "lonely"
        ]
        assert lonely.state.value == "open" and lonely.requests == 3 and lonely.in_flight == 0


async def test_retry_budget_caps_upstream_load_in_an_outage(upstreams, upstream, tmp_path) -> None:
    for server in upstreams:
        await server.reset()
        await server.control(error_rate=1.0, error_status=500)
    path = tmp_path / "routes.yaml"
    path.write_text(catalog_text(*upstreams))
    try:
        # Breakers that never open: only the budget stands between clients and upstreams. The
        # core's clock stands still, so the budget's floor (1 a second) adds nothing, however
        # long the machine takes: the bound is exact rather than measured.
        async with running_kyma(
            tmp_path,
            None,
            upstream,
            "sqlite",
            clock=FrozenClock(),
            catalog=path,
            tiers=GENEROUS,
            breaker_failures_to_open=10_000,
        ) as kyma:
            _, kyma.key = await kyma.create_account()  # type: ignore[attr-defined]
            replies = await send(kyma, "trio", 200, concurrency=8)
            assert all(r.status_code == 502 for r in replies)
            total = sum([await served(s) for s in upstreams])
            # 200 first tries, plus 20% of them, plus the initial 10 saved; every request wants
            # two retries, so the initial savings at least are spent.
            assert 200 + 10 <= total <= 200 + 40 + 10, total
    finally:
        for server in upstreams:
            await server.reset()


async def test_catalogue_reload_and_status_through_the_cli(routed, upstreams, tmp_path) -> None:
    from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]

    code, out, _ = await kyma_cli(routed, "admin", "models", "status")
    assert code == 0 and "weighted" in out and "closed" in out
    path = routed.settings.catalog
    good = (
        path.read_text()
        + f"  - name: added-later\n    deployments:\n      - {{base_url: '{upstreams[2].base_url}', model: x}}\n"
    )
    path.write_text("models: [ {name: broken")
    code, _, err = await kyma_cli(routed, "admin", "models", "reload")
    assert code == 1 and "not reloaded" in err
    assert len(await send(routed, "weighted", 1)) == 1  # the running catalogue stays
    path.write_text(good)
    code, out, _ = await kyma_cli(routed, "admin", "models", "reload")
    assert code == 0 and "added-later" in out
    [reply] = await send(routed, "added-later", 1)
    assert reply.status_code == 200 and reply.json()["model"] == "added-later"
