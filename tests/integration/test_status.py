"""The public status: each model's availability over the last hour and day measured from real
request outcomes (the injected clock moves the windows), the breakers' view, and incidents
posted, updated and resolved by admins through `kyma admin incidents`, audited."""

from __future__ import annotations

import json
import secrets

import pytest
import pytest_asyncio

from tests.conftest import Upstream, running_kyma  # type: ignore[import-not-found]
from tests.fakes.clock import FrozenClock  # type: ignore[import-not-found]
from tests.integration.test_cli import kyma_cli  # type: ignore[import-not-found]
from tests.integration.test_credits import set_balance  # type: ignore[import-not-found]

pytestmark = pytest.mark.asyncio


def _catalog(path, upstream: Upstream, model: str):  # type: ignore[no-untyped-def]
    path.write_text(
        f"""
models:
  - name: {model}
    price: {{input_per_million: "1.00", output_per_million: "2.00"}}
    deployments:
      - name: only
        base_url: {upstream.base_url}
        model: upstream-model
        timeouts: {{connect: 2, first_token: 5, idle: 5, total: 30}}
  - name: kyma-demo
    deployments:
      - base_url: demo://local/v1
        model: kyma-demo
"""
    )
    return path


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def clocked(request, upstream, tmp_path):
    # Its own model name: on PostgreSQL the database is the session's, shared with others.
    model = f"status-{secrets.token_hex(4)}"
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    clock = FrozenClock()
    async with running_kyma(
        tmp_path,
        url,
        upstream,
        request.param,
        clock=clock,
        catalog=_catalog(tmp_path / "catalog.yaml", upstream, model),
    ) as kyma:
        kyma.clock, kyma.model = clock, model  # type: ignore[attr-defined]
        yield kyma


async def _status(kyma) -> dict:
    await kyma.core.status.outcomes.flush()
    kyma.core.status.report.forget()
    async with kyma.http() as http:
        reply = await http.get("/v1/status")  # no key: the status is public
    assert reply.status_code == 200
    return reply.json()


def _model(status: dict, name: str) -> dict:
    return next(m for m in status["models"] if m["id"] == name)


async def test_availability_comes_from_real_request_outcomes(clocked) -> None:
    kyma, model = clocked, clocked.model
    quiet = _model(await _status(kyma), model)
    assert quiet["availability_1h"] is None and quiet["requests_24h"] == 0
    assert quiet["state"] == "operational"
    account_id, key = await kyma.create_account()
    await set_balance(kyma, account_id, 10**9)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"authorization": f"Bearer {key}"}
    async with kyma.http() as http:
        for _ in range(3):
            assert (
                await http.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 200
        await kyma.upstream.control(error_rate=1.0)
        for _ in range(2):  # the upstream fails: the service's fault
            assert (
                await http.post("/v1/chat/completions", json=body, headers=headers)
            ).status_code == 502
        await kyma.upstream.control(error_rate=0)
        # The caller's own mistakes count neither way.
        assert (
            await http.post("/v1/chat/completions", json={**body, "n": 1000}, headers=headers)
        ).status_code == 400
        assert (
            await http.post(
                "/v1/chat/completions", json=body, headers={"authorization": "Bearer x"}
            )
        ).status_code == 401
    status = _model(await _status(kyma), model)
    assert status["requests_1h"] == 5 and status["availability_1h"] == pytest.approx(0.6)
    assert status["requests_24h"] == 5 and status["availability_24h"] == pytest.approx(0.6)
    kyma.clock.advance(3600 + 60)  # an hour later: out of the hour, still in the day
    status = _model(await _status(kyma), model)
    assert status["availability_1h"] is None and status["availability_24h"] == pytest.approx(0.6)
    kyma.clock.advance(86400)
    assert _model(await _status(kyma), model)["requests_24h"] == 0
    await kyma.settled()


async def test_incidents_through_the_cli_are_public_and_audited(kyma) -> None:
    if kyma.backend == "postgres":
        pytest.skip("the CLI is the same on both; one database keeps the suite lean")
    title = f"Slow answers {kyma.backend} {secrets.token_hex(3)}"
    code, out, err = await kyma_cli(
        kyma,
        "admin",
        "incidents",
        "post",
        title,
        "--body",
        "Requests to test-model are slow.",
        "--actor",
        "ops",
        "--json",
    )
    assert code == 0, err
    incident = json.loads(out)["incident"]
    assert incident["status"] == "INCIDENT_STATUS_INVESTIGATING"
    incident_id = incident["id"]
    code, out, err = await kyma_cli(
        kyma,
        "admin",
        "incidents",
        "update",
        str(incident_id),
        "--body",
        "A provider is degraded; we moved traffic.",
        "--status",
        "monitoring",
    )
    assert code == 0 and "monitoring" in out, err
    kyma.core.status.report.forget()
    async with kyma.http() as http:
        shown = next(
            i for i in (await http.get("/v1/status")).json()["incidents"] if i["title"] == title
        )
    assert shown["status"] == "monitoring" and shown["body"].startswith("A provider")
    assert shown["resolved_at"] is None and shown["updated_at"] >= shown["created_at"]
    code, out, _ = await kyma_cli(kyma, "admin", "incidents", "resolve", str(incident_id))
    assert code == 0 and "resolved" in out
    code, out, _ = await kyma_cli(kyma, "admin", "incidents", "list")
    assert title not in out  # open ones only, unless --all
    code, out, _ = await kyma_cli(kyma, "admin", "incidents", "list", "--all")
    assert title in out
    code, _, err = await kyma_cli(
        kyma, "admin", "incidents", "update", str(incident_id), "--body", "x"
    )
    assert code == 1 and "resolved already" in err
    kyma.core.status.report.forget()
    async with kyma.http() as http:
        shown = next(
            i for i in (await http.get("/v1/status")).json()["incidents"] if i["title"] == title
        )
    assert shown["status"] == "resolved" and shown["resolved_at"] is not None
    code, out, _ = await kyma_cli(kyma, "admin", "audit", "--limit", "500")
    actions = [line for line in out.splitlines() if f"incident {incident_id}" in line]
    assert any("incident_post" in a and "ops" in a for a in actions)
    assert any("incident_update" in a for a in actions)
    assert any("incident_resolve" in a for a in actions)
