"""An upstream that reports impossible usage cannot create credit or overcharge: such usage is
counted by Kyma instead (and marked estimated), and a charge never exceeds its hold."""

from __future__ import annotations

import json
from decimal import Decimal

import grpc
import httpx
import orjson
import pytest

from core_service.catalog import Catalog, Deployment, Model, Price
from core_service.composition import build_core
from core_service.settings import Settings
from kyma.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from kyma.inference.v1 import inference_service_pb2 as pb
from kyma.inference.v1 import inference_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.asyncio

WELCOME = 500_000_000
# The hold for a one-message "hi" prompt (8 tokens estimated, held as 26) and the 100-token cap.
HOLD = 26 * 1_000 + 100 * 2_000


def upstream_reporting(usage: object) -> httpx.MockTransport:
    def answer(_request: httpx.Request) -> httpx.Response:
        body: dict = {
            "id": "chatcmpl-x",
            "object": "chat.completion",
            "created": 1,
            "model": "up",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "one two three"},
                    "finish_reason": "stop",
                }
            ],
        }
        if usage is not None:
            body["usage"] = usage
        # The standard json module writes NaN, as a broken upstream might.
        return httpx.Response(200, content=json.dumps(body).encode())

    return httpx.MockTransport(answer)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": -1000, "completion_tokens": -5000},
        {"prompt_tokens": float("nan"), "completion_tokens": 3},
        {"prompt_tokens": 2.5, "completion_tokens": 3},
        {"prompt_tokens": 10**15, "completion_tokens": 10**15},
        {"prompt_tokens": "12", "completion_tokens": "9"},
        None,
    ],
)
async def test_impossible_usage_never_creates_credit(tmp_path, usage) -> None:
    catalog = Catalog(
        (
            Model(
                name="m",
                max_output_tokens=100,
                price=Price(input_per_million=Decimal(1), output_per_million=Decimal(2)),
                deployments=(
                    Deployment(name="d", base_url="http://upstream.invalid/v1", model="up"),
                ),
            ),
        )
    )
    settings = Settings(data_dir=tmp_path, grpc_port=0, admin_token="admin-token")
    core = await build_core(settings, upstream_transport=upstream_reporting(usage), catalog=catalog)
    await core.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{core.port}") as channel:
            created = await admin_service_pb2_grpc.AdminServiceStub(channel).CreateAccount(
                admin_service_pb2.CreateAccountRequest(email="u@example.com"),
                metadata=(("authorization", "Bearer admin-token"),),
            )
            body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            reply = await pb_grpc.InferenceServiceStub(channel).CreateChatCompletion(
                pb.CreateChatCompletionRequest(body=body),
                metadata=(("authorization", f"Bearer {created.api_key_secret}"),),
            )
        assert reply.usage.estimated and reply.usage.completion_tokens == 3  # "one two three"
        await core.storage.writer.drain(30)
        balance = await core.ledger.balance(created.account.id)
        charged = WELCOME - balance.balance_nanos
        assert 0 < charged <= HOLD and balance.held_nanos == 0
    finally:
        await core.stop(grace=1)
