from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from core_service.billing.pricing import cost_nanos, nanos_to_usd, usd_to_nanos
from core_service.catalog import Price


def test_cost_is_exact_integer_nanos() -> None:
    price = Price(input_per_million=Decimal("0.15"), output_per_million=Decimal("0.60"))
    # 1,000 × 150 nanos + 500 × 600 nanos
    assert cost_nanos(price, 1000, 500) == 150_000 + 300_000


def test_sub_nano_prices_round_up_per_side() -> None:
    price = Price(input_per_million=Decimal("0.0375"), output_per_million=Decimal("0.0005"))
    assert cost_nanos(price, 1, 0) == 38  # 37.5 nanos a token
    assert cost_nanos(price, 1000, 0) == 37_500
    assert cost_nanos(price, 0, 1) == 1  # half a nano a token: never rounded down to free
    assert cost_nanos(price, 0, 1000) == 500


def test_free_model_costs_nothing() -> None:
    assert cost_nanos(Price(), 10**6, 10**6) == 0


@pytest.mark.parametrize("bad", ["-1", "NaN", "Infinity", "0.0000000001"])
def test_bad_prices_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError):
        Price(input_per_million=Decimal(bad))


def test_usd_strings() -> None:
    assert nanos_to_usd(500_000_000) == "0.500000000"
    assert nanos_to_usd(1) == "0.000000001"
    assert nanos_to_usd(-2_500_000_000) == "-2.500000000"
    assert usd_to_nanos(Decimal("10.25")) == 10_250_000_000
    with pytest.raises(ValueError):
        usd_to_nanos(Decimal("0.0000000001"))
