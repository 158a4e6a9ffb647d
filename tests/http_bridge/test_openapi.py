"""The bridge's OpenAPI document is truthful: schemathesis (pinned in the dev extras) drives every
operation it describes against a real bridge and core — with a valid key, the fake Stripe, the
test upstream — with data that fits the document and data that does not, and every answer must
be a non-5xx whose status, content type and body the document describes.

Bounded: `EXAMPLES` generated cases per operation and mode, derandomized (the same cases every
run), no shrinking database; schemathesis runs in a worker thread while the servers serve in
the test's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hypothesis
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from http_bridge.openapi import OPERATIONS
from kyma.admin.v1 import admin_service_pb2
from tests.conftest import running_kyma  # type: ignore[import-not-found]
from tests.fakes.stripe_api import (  # type: ignore[import-not-found]
    API_KEY,
    WEBHOOK_SECRET,
    running_fake_stripe,
)

# The stripe library posts its form body as `data=`; httpx 0.28 warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
GENEROUS = [{"tier": 0, "min_purchased_usd": "0", "rpm": 10**6, "model_rpm": 10**6, "tpm": 10**9}]


@pytest_asyncio.fixture
async def described(upstream, tmp_path):
    async with running_fake_stripe() as stripe_api:
        async with running_kyma(
            tmp_path,
            None,
            upstream,
            "sqlite",
            tiers=GENEROUS,
            stripe_secret_key=API_KEY,
            stripe_webhook_secret=WEBHOOK_SECRET,
            stripe_api_base=stripe_api.url,
        ) as kyma:
            account_id, kyma.key = await kyma.create_account()  # type: ignore[attr-defined]
            await kyma.admin(
                "AdjustCredits",
                admin_service_pb2.AdjustCreditsRequest(
                    account_id=account_id, amount_usd="1000", reason="schemathesis"
                ),
            )
            yield kyma
            await kyma.verify_ledger()


async def test_the_document_describes_every_public_route(described) -> None:
    async with described.http() as http:
        reply = await http.get("/openapi.json")
    assert reply.status_code == 200
    document = reply.json()
    served = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served == set(OPERATIONS)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            errors = {s: r for s, r in operation["responses"].items() if s >= "400"}
            assert "422" not in operation["responses"], (method, path)
            # Anthropic's routes answer errors in Anthropic's shape; every other in OpenAI's.
            shape = "AnthropicError" if path.startswith("/v1/messages") else "Error"
            for response in errors.values():
                schema = response["content"]["application/json"]["schema"]
                if path != "/readyz":
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (method, path)


def _runner(label: str, base_url: str, key: str, failures: list[str]) -> Any:
    def run(case: Any) -> None:
        try:
            case.call_and_validate(
                base_url=base_url,
                headers={"authorization": f"Bearer {key}"},
                checks=CHECKS,
                timeout=60,
            )
        except Exception as failure:  # every failure is collected, none shrunk
            failures.append(f"{label}: {failure}")

    return run


def _drive(document: dict[str, Any], base_url: str, key: str) -> list[str]:
    """Every operation, EXAMPLES cases per mode; the failures, described."""
    schema = schemathesis.openapi.from_dict(document)
    settings = hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run = _runner(f"{operation.label} [{mode}]", base_url, key, failures)
            try:
                settings(hypothesis.given(operation.as_strategy(generation_mode=mode))(run))()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to get wrong (no parameters, no body): no negative case exists.
                assert mode == GenerationMode.NEGATIVE, operation.label
    return failures


async def test_schemathesis_finds_no_5xx_and_no_schema_violation(described) -> None:
    async with described.http() as http:
        document = (await http.get("/openapi.json")).json()
    failures = await asyncio.to_thread(_drive, document, described.http_url, described.key)
    assert not failures, "\n\n".join(failures[:20])
