"""What a request costs: exact integer nano-dollars from token counts and per-model prices.

Each side (uncached input, cache reads, cache writes, output) is rounded up to a whole
nano-dollar, so a price finer than a nano-dollar per token never rounds a charge down to
nothing.
"""

from __future__ import annotations

import re
from decimal import Decimal

from core_service.catalog import Price
from core_service.errors import InvalidRequest
from core_service.values import TokenUsage

NANOS_PER_USD = 10**9
_MILLION = 10**6


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _side(tokens: int, nanos_per_million: int) -> int:
    return _ceil_div(tokens * nanos_per_million, _MILLION)


def cost_nanos(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """Plain input and output at their prices (no cache)."""
    return _side(prompt_tokens, price.input_nanos_per_million) + _side(
        completion_tokens, price.output_nanos_per_million
    )


def usage_cost_nanos(price: Price, usage: TokenUsage) -> int:
    """What `usage` costs: uncached input at the input price, cache reads and cache writes at
    theirs (the input price where the catalogue sets none — never zero), output (reasoning
    included) at the output price. Each token is counted once; each side is rounded up."""
    return (
        _side(usage.uncached_prompt_tokens, price.input_nanos_per_million)
        + _side(usage.cached_tokens, price.cached_input_nanos_per_million)
        + _side(usage.cache_write_tokens, price.cache_write_nanos_per_million)
        + _side(usage.completion_tokens, price.output_nanos_per_million)
    )


def nanos_to_usd(nanos: int) -> str:
    """Decimal USD string with all nine places, e.g. 500000000 -> "0.500000000"."""
    return f"{Decimal(nanos).scaleb(-9):.9f}"


def usd_to_nanos(usd: Decimal) -> int:
    nanos = usd * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError("amount finer than a nano-dollar")
    return int(nanos)


# A plain decimal amount of USD, as people write it (no exponent, NaN or digit groups).
_PLAIN_USD = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})?")


def parse_usd_nanos(text: str, *, param: str, max_usd: int = 1_000_000) -> int:
    """A non-negative amount of USD given as text ("10", "2.50") in nano-dollars, or
    InvalidRequest naming `param`."""
    text = text.strip()
    if not _PLAIN_USD.fullmatch(text):
        raise InvalidRequest(
            f'{param} must be a plain decimal amount of US dollars, such as "10" or "2.50".',
            param=param,
        )
    amount = Decimal(text)
    if amount > max_usd:
        raise InvalidRequest(f"{param} is at most ${max_usd:,}.", param=param)
    return usd_to_nanos(amount)
