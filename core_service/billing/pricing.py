"""What a request costs: exact integer nano-dollars from token counts and per-model prices.

Each side (input, output) is rounded up to a whole nano-dollar, so a price finer than a
nano-dollar per token never rounds a charge down to nothing.
"""

from __future__ import annotations

from decimal import Decimal

from core_service.catalog import Price

NANOS_PER_USD = 10**9
_MILLION = 10**6


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def cost_nanos(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    return _ceil_div(prompt_tokens * price.input_nanos_per_million, _MILLION) + _ceil_div(
        completion_tokens * price.output_nanos_per_million, _MILLION
    )


def nanos_to_usd(nanos: int) -> str:
    """Decimal USD string with all nine places, e.g. 500000000 -> "0.500000000"."""
    return f"{Decimal(nanos).scaleb(-9):.9f}"


def usd_to_nanos(usd: Decimal) -> int:
    nanos = usd * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise ValueError("amount finer than a nano-dollar")
    return int(nanos)
