"""The usage and cost a client is shown (hypothesis over every usage): Kyma's own usage object
reads back as the very usage it was made from — no token counted twice or lost, the parts
inside their wholes — and `usage.cost` is exactly the charge, to the nano-dollar."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from core_service.billing.metering import Charge
from core_service.inference.costs import cost_text, openai_usage, priced_response, priced_usage
from core_service.inference.usage import usage_from_upstream
from core_service.values import TokenUsage

counts = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def usages(draw: st.DrawFn) -> TokenUsage:
    prompt, completion = draw(counts), draw(counts)
    cached = draw(st.integers(min_value=0, max_value=prompt))
    reasoning = draw(st.integers(min_value=0, max_value=completion))
    return TokenUsage(
        prompt, completion, draw(st.booleans()), cached_tokens=cached, reasoning_tokens=reasoning
    )


@given(usage=usages(), cost=st.integers(min_value=0, max_value=10**15))
def test_the_usage_shown_is_the_usage_charged(usage: TokenUsage, cost: int) -> None:
    shown = priced_usage(None, Charge(usage, cost))
    read = usage_from_upstream(shown)
    assert read is not None
    assert (read.prompt_tokens, read.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert (read.cached_tokens, read.reasoning_tokens) == (
        usage.cached_tokens,
        usage.reasoning_tokens,
    )
    assert shown["total_tokens"] == usage.prompt_tokens + usage.completion_tokens
    assert Decimal(shown["cost"]) * 10**9 == cost >= 0
    assert shown.get("estimated", False) is usage.estimated


def test_the_upstreams_usage_is_kept_as_it_sent_it_unless_kyma_counted() -> None:
    reported = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "vendor": "x"}
    counted = TokenUsage(3, 1)
    assert priced_usage(reported, Charge(counted, 12)) == {**reported, "cost": "0.000000012"}
    estimated = TokenUsage(5, 2, estimated=True)
    assert priced_usage(reported, Charge(estimated, 12)) == {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "estimated": True,
        "cost": "0.000000012",
    }
    assert reported == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
        "vendor": "x",
    }


def test_a_unary_body_gets_its_cost_and_embeddings_have_no_completion_side() -> None:
    body = {"object": "list", "data": []}
    priced_response(body, Charge(TokenUsage(7, 0, estimated=True), 700), completion=False)
    assert body["usage"] == {
        "prompt_tokens": 7,
        "total_tokens": 7,
        "estimated": True,
        "cost": "0.000000700",
    }


def test_cached_and_reasoning_parts_appear_only_when_there_are_any() -> None:
    assert openai_usage(TokenUsage(4, 2)) == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
    }
    assert openai_usage(TokenUsage(4, 2, cached_tokens=3, reasoning_tokens=1)) == {
        "prompt_tokens": 4,
        "completion_tokens": 2,
        "total_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert cost_text(Charge(TokenUsage(0, 0), 12_345)) == "0.000012345"
