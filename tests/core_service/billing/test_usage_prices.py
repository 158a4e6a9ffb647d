"""Cache-aware prices over every usage shape (hypothesis): whatever mix of cached, written,
reasoning and plain tokens an upstream reports, in whichever dialect, the cost is never
negative, no token is counted twice, an unset cache price bills the full input price, and the
cost equals the price computed by hand."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from core_service.billing.pricing import usage_cost_nanos
from core_service.catalog import Price
from core_service.inference.usage import (
    usage_from_messages,
    usage_from_responses,
    usage_from_upstream,
)

counts = st.integers(min_value=0, max_value=2_000_000)
prices = st.decimals(min_value=0, max_value=100, places=3)
optional_prices = st.none() | prices


def _ceil(numerator: Decimal) -> int:
    return int(-(-numerator // 1))


def by_hand(price: Price, uncached: int, cached: int, written: int, output: int) -> int:
    cached_price = price.cached_input_per_million
    write_price = price.cache_write_per_million
    per_token = Decimal(10**9) / 10**6  # USD per million → nano-dollars per token
    return (
        _ceil(uncached * price.input_per_million * per_token)
        + _ceil(
            cached * (price.input_per_million if cached_price is None else cached_price) * per_token
        )
        + _ceil(
            written * (price.input_per_million if write_price is None else write_price) * per_token
        )
        + _ceil(output * price.output_per_million * per_token)
    )


@given(
    uncached=counts,
    cached=counts,
    written=counts,
    output=counts,
    reasoning_share=st.floats(min_value=0, max_value=1),
    input_price=prices,
    output_price=prices,
    cached_price=optional_prices,
    write_price=optional_prices,
)
def test_every_dialect_costs_what_the_hand_computes(
    uncached,
    cached,
    written,
    output,
    reasoning_share,
    input_price,
    output_price,
    cached_price,
    write_price,
) -> None:
    price = Price(
        input_per_million=input_price,
        output_per_million=output_price,
        cached_input_per_million=cached_price,
        cache_write_per_million=write_price,
    )
    reasoning = int(output * reasoning_share)
    expected = by_hand(price, uncached, cached, written, output)
    chat = usage_from_upstream(
        {
            "prompt_tokens": uncached + cached,
            "completion_tokens": output,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    )
    responses = usage_from_responses(
        {
            "input_tokens": uncached + cached,
            "output_tokens": output,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens_details": {"reasoning_tokens": reasoning},
        }
    )
    messages = usage_from_messages(
        {
            "input_tokens": uncached,
            "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": written,
            "output_tokens": output,
        }
    )
    assert chat is not None and responses is not None and messages is not None
    # OpenAI's dialects know no cache writes; Anthropic's does.
    assert usage_cost_nanos(price, chat) == by_hand(price, uncached, cached, 0, output)
    assert usage_cost_nanos(price, responses) == usage_cost_nanos(price, chat)
    assert usage_cost_nanos(price, messages) == expected >= 0
    for usage in (chat, responses, messages):
        # No token counted twice: the parts never exceed their wholes.
        assert usage.cached_tokens + usage.cache_write_tokens <= usage.prompt_tokens
        assert usage.reasoning_tokens <= usage.completion_tokens
    assert messages.prompt_tokens == uncached + cached + written  # Anthropic's input is made whole
    assert chat.reasoning_tokens == responses.reasoning_tokens == reasoning


@given(prompt=counts, cached=counts)
def test_a_part_larger_than_its_whole_is_not_believed(prompt, cached) -> None:
    reported = usage_from_upstream(
        {
            "prompt_tokens": prompt,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
    )
    assert (reported is None) == (cached > prompt)


def test_an_unset_cache_price_is_the_input_price_never_zero() -> None:
    price = Price(input_per_million=Decimal("3"), output_per_million=Decimal("15"))
    usage = usage_from_messages(
        {"input_tokens": 0, "cache_read_input_tokens": 1_000_000, "output_tokens": 0}
    )
    assert usage is not None and usage_cost_nanos(price, usage) == 3 * 10**9


def test_bad_details_are_not_believed() -> None:
    for details in ("x", {"cached_tokens": -1}, {"cached_tokens": 1.5}, {"cached_tokens": True}):
        assert (
            usage_from_upstream(
                {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": details}
            )
            is None
        )
