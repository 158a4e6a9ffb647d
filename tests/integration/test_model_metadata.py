"""GET /v1/models and /v1/models/{id} through the official openai SDK: OpenAI's four fields as
OpenAI has them, and beside them what the catalogue declares — exactly, and nothing it does
not (an undeclared context length is absent, not guessed) — the prices, where the model is
called, and the caller's own limits."""

from __future__ import annotations

import openai
import pytest

from kyma.admin.v1 import admin_service_pb2

pytestmark = pytest.mark.asyncio

TIER_0 = {
    "tier": 0,
    "requests_per_minute": 30,
    "requests_per_minute_per_model": 25,
    "tokens_per_minute": 200_000,
}
ALL_ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
ALL_DIALECTS = ["openai.chat_completions", "openai.completions", "openai.embeddings"]


def extras(model: openai.types.Model) -> dict:
    """What Kyma adds beside OpenAI's fields (the SDK keeps unknown fields)."""
    return dict(model.model_extra or {})


async def test_models_carry_what_the_catalogue_declares(client: openai.AsyncOpenAI) -> None:
    listed = {model.id: model for model in (await client.models.list()).data}
    declared = listed["test-model-cached"]
    assert (declared.object, declared.owned_by, declared.created) == (
        "model",
        "kyma-tests",
        1_767_225_600,
    )
    assert extras(declared) == {
        "context_length": 65536,
        "max_output_tokens": 1024,
        "pricing": {
            "currency": "USD",
            "input_per_million": "1",
            "cached_input_per_million": "0.25",
            "cache_write_per_million": "1.25",
            "output_per_million": "2",
        },
        "endpoints": ["/v1/chat/completions", "/v1/completions"],
        "dialects": ["openai.chat_completions", "openai.completions"],
        "capabilities": {
            "tools": True,
            "structured_outputs": True,
            "vision": False,
            "reasoning": True,
        },
        "limits": TIER_0,
    }
    # No cache price set: a cached token costs the input price, and says so. No capability
    # declared: none shown.
    assert extras(listed["test-model"]) == {
        "context_length": 131072,
        "max_output_tokens": 2048,
        "pricing": {
            "currency": "USD",
            "input_per_million": "1",
            "cached_input_per_million": "1",
            "cache_write_per_million": "1",
            "output_per_million": "2",
        },
        "endpoints": ALL_ENDPOINTS,
        "dialects": ALL_DIALECTS,
        "limits": TIER_0,
    }
    # The tests' catalogue declares nothing for the demo model: no context length, no output
    # cap (Kyma's defaults are not the model's facts), free.
    assert extras(listed["kyma-demo"]) == {
        "pricing": {
            "currency": "USD",
            "input_per_million": "0",
            "cached_input_per_million": "0",
            "cache_write_per_million": "0",
            "output_per_million": "0",
        },
        "endpoints": ALL_ENDPOINTS,
        "dialects": ALL_DIALECTS,
        "limits": TIER_0,
    }
    retrieved = await client.models.retrieve("test-model-cached")
    assert retrieved.model_dump() == declared.model_dump()


async def test_the_limits_are_the_callers_own(kyma, account) -> None:
    account_id, key = account
    await kyma.admin("PinTier", admin_service_pb2.PinTierRequest(account_id=account_id, tier=2))
    await kyma.account_changes_seen()
    async with kyma.client(key) as sdk:
        model = await sdk.models.retrieve("test-model")
    assert extras(model)["limits"] == {
        "tier": 2,
        "requests_per_minute": 120,
        "requests_per_minute_per_model": 100,
        "tokens_per_minute": 2_000_000,
    }
