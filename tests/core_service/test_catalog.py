from __future__ import annotations

import pathlib

import pytest

from core_service.catalog import Catalog, CatalogError
from core_service.errors import ModelNotFound

GOOD = """
models:
  - name: llama
    price: {input_per_million: "0.05", output_per_million: "0.08"}
    deployments:
      - name: a
        base_url: https://a.example/v1/
        model: meta/llama
        api_key_env: A_KEY
        weight: 3
      - base_url: https://b.example/v1
        model: llama-b
"""


def test_loads_and_resolves_keys(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD)
    catalog = Catalog.load(path, {"A_KEY": "sk-a"})
    model = catalog.get("llama")
    first, second = model.deployments
    assert first.base_url == "https://a.example/v1" and first.api_key.get_secret_value() == "sk-a"
    assert second.name == "llama#1" and second.api_key is None
    assert model.price.input_nanos_per_million == 50_000_000
    with pytest.raises(ModelNotFound):
        catalog.get("nope")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("models: [{name: x, deployments: []}]", "deployments"),
        ("models: [{name: x, deployments: [{base_url: 'ftp://x', model: m}]}]", "base_url"),
        (
            "models: [{name: x, surprise: 1, deployments: [{base_url: 'http://x', model: m}]}]",
            "surprise",
        ),
        (
            "models: [{name: x, deployments: [{base_url: 'http://x', model: m, api_key_env: MISSING}]}]",
            "MISSING",
        ),
        (
            "models: [{name: x, deployments: [{base_url: 'http://x', model: m}]}, {name: x, deployments: [{base_url: 'http://x', model: m}]}]",
            "twice",
        ),
        ("models: [", "cannot read"),
    ],
)
def test_bad_catalogues_say_what_is_wrong(tmp_path: pathlib.Path, text: str, fragment: str) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(CatalogError, match=fragment):
        Catalog.load(path, {})


def test_builtin_has_the_demo_model() -> None:
    assert Catalog.builtin().get("kyma-demo").deployments[0].base_url.startswith("demo://")
