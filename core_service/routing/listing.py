"""A model as `GET /v1/models` describes it: what the catalogue declares (context length,
output cap, capabilities), what it costs, and where and in which dialect it is called.

What the catalogue does not declare is absent, never Kyma's default standing in for it: a
client that sees no context length knows it is unknown, instead of trusting a guess. Prices
are always known — they are what Kyma bills — and are the effective ones: an unset cache
price is the input price.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from core_service.billing.metering import price_of
from core_service.catalog import Model

# Kyma's endpoints: their HTTP path and the API dialect spoken there.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "chat.completions": ("/v1/chat/completions", "openai.chat_completions"),
    "completions": ("/v1/completions", "openai.completions"),
    "embeddings": ("/v1/embeddings", "openai.embeddings"),
}


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    path: str
    dialect: str


@dataclass(frozen=True)
class ListedPrice:
    """USD per million tokens, exact."""

    input: Decimal
    cached_input: Decimal
    cache_write: Decimal
    output: Decimal


@dataclass(frozen=True)
class ModelListing:
    name: str
    owned_by: str
    created: int
    context_window: int | None
    max_output_tokens: int | None
    price: ListedPrice
    endpoints: tuple[EndpointInfo, ...]
    capabilities: dict[str, bool]


def endpoint_info(name: str) -> EndpointInfo:
    path, dialect = ENDPOINTS.get(name, (f"/v1/{name.replace('.', '/')}", name))
    return EndpointInfo(name, path, dialect)


def _per_million(nanos: int) -> Decimal:
    return Decimal(nanos).scaleb(-9)


def listed_price(model: Model) -> ListedPrice:
    """The model's prices; a cache price that a deployment sets for itself is listed at the
    highest any deployment of the model charges (what such a token may cost at most — which
    deployment answers is routing's choice)."""
    prices = [price_of(model, deployment) for deployment in model.deployments] or [model.price]
    return ListedPrice(
        input=model.price.input_per_million,
        cached_input=_per_million(max(p.cached_input_nanos_per_million for p in prices)),
        cache_write=_per_million(max(p.cache_write_nanos_per_million for p in prices)),
        output=model.price.output_per_million,
    )


def listing(model: Model) -> ModelListing:
    return ModelListing(
        name=model.name,
        owned_by=model.owned_by,
        created=model.created,
        context_window=model.context_window if model.declares("context_window") else None,
        max_output_tokens=model.max_output_tokens if model.declares("max_output_tokens") else None,
        price=listed_price(model),
        endpoints=tuple(endpoint_info(name) for name in model.endpoints),
        capabilities=model.capabilities.declared(),
    )


def decimal_text(value: Decimal) -> str:
    """An exact decimal as plain digits, never in exponent form ("0.05", "10", "0.000000001");
    trailing zeros of a price computed from nano-dollars are dropped."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
