"""What GET /v1/models is built from: what the catalogue declares, nothing it does not."""

from __future__ import annotations

import pathlib
from decimal import Decimal

import pytest

from core_service.catalog import Catalog, CatalogError
from core_service.routing.listing import decimal_text, listing

CATALOG = """
models:
  - name: declared
    context_window: 200000
    max_output_tokens: 8192
    capabilities: {tools: true, vision: false}
    price: {input_per_million: "3", output_per_million: "15", cached_input_per_million: "0.30"}
    endpoints: [chat.completions]
    deployments:
      - name: a
        base_url: https://a.example/v1
        model: m
      - name: b
        base_url: https://b.example/v1
        model: m
        cached_input_per_million: "0.5"
        cache_write_per_million: "3.75"
  - name: bare
    deployments:
      - base_url: https://c.example/v1
        model: m
"""


@pytest.fixture
def catalog(tmp_path: pathlib.Path) -> Catalog:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG)
    return Catalog.load(path, {})


def test_declared_facts_are_listed(catalog: Catalog) -> None:
    listed = listing(catalog.get("declared"))
    assert (listed.context_window, listed.max_output_tokens) == (200000, 8192)
    # Only what was declared: structured outputs and reasoning are unknown, not false.
    assert listed.capabilities == {"tools": True, "vision": False}
    assert [(e.path, e.dialect) for e in listed.endpoints] == [
        ("/v1/chat/completions", "openai.chat_completions")
    ]
    price = listed.price
    assert (price.input, price.output) == (Decimal(3), Decimal(15))
    # A deployment's own cache prices: the dearest any deployment charges (a's cache writes
    # fall back to the input price, 3; b's are 3.75).
    assert (price.cached_input, price.cache_write) == (Decimal("0.5"), Decimal("3.75"))


def test_what_is_not_declared_is_absent(catalog: Catalog) -> None:
    listed = listing(catalog.get("bare"))
    assert listed.context_window is None and listed.max_output_tokens is None
    assert listed.capabilities == {}
    assert listed.price.cached_input == listed.price.cache_write == listed.price.input == 0
    assert len(listed.endpoints) == 3


def test_a_capability_must_be_a_boolean(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(CATALOG.replace("tools: true", "tools: sometimes"))
    with pytest.raises(CatalogError, match="tools"):
        Catalog.load(path, {})
    path.write_text(CATALOG.replace("tools: true", "telepathy: true"))
    with pytest.raises(CatalogError, match="telepathy"):
        Catalog.load(path, {})


@pytest.mark.parametrize(
    "value, text",
    [
        ("0.10", "0.1"),
        ("1E+1", "10"),
        ("0.000000001", "0.000000001"),
        ("0.300000000", "0.3"),
        ("0", "0"),
        ("0E-9", "0"),
        ("2.50", "2.5"),
    ],
)
def test_prices_are_plain_exact_decimals(value: str, text: str) -> None:
    assert decimal_text(Decimal(value)) == text
