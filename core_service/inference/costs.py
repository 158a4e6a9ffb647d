"""The charge as a client sees it in every answer: `usage.cost`, a decimal USD string with all
nine places of the nano-dollars charged ("0.000012345") — the same amount as the ledger entry,
the request log and daily usage, because all of them are written from the same (hold-capped)
`Charge`.

These are the OpenAI shapes (Chat Completions, Completions, Embeddings); other dialects put the
same `cost_text` into their own usage objects.
"""

from __future__ import annotations

from typing import Any

from core_service.billing.metering import Charge
from core_service.billing.pricing import nanos_to_usd
from core_service.values import TokenUsage


def cost_text(charge: Charge) -> str:
    """The charge in USD, exactly: `usage.cost`, the `x-kyma-cost` header."""
    return nanos_to_usd(charge.cost_nanos)


def openai_usage(usage: TokenUsage, *, completion: bool = True) -> dict[str, Any]:
    """Usage as OpenAI reports it, from Kyma's own view of it: cached tokens inside the prompt
    tokens, reasoning tokens inside the completion tokens, each shown apart in its details;
    `"estimated": true` when Kyma counted because the upstream did not say (or not credibly).
    Embeddings (`completion=False`) have no completion side."""
    report: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens}
    if completion:
        report["completion_tokens"] = usage.completion_tokens
    report["total_tokens"] = usage.total_tokens
    if usage.cached_tokens or usage.cache_write_tokens:
        report["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
        if usage.cache_write_tokens:
            report["prompt_tokens_details"]["cache_write_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        report["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    if usage.estimated:
        report["estimated"] = True
    return report


def priced_usage(reported: Any, charge: Charge, *, completion: bool = True) -> dict[str, Any]:
    """The usage object a client gets: the upstream's own (`reported`, kept as it sent it) when
    the charge was made from it, else Kyma's count; either way with `cost`."""
    if isinstance(reported, dict) and not charge.usage.estimated:
        usage = dict(reported)
    else:
        usage = openai_usage(charge.usage, completion=completion)
    usage["cost"] = cost_text(charge)
    return usage


def priced_response(body: dict[str, Any], charge: Charge, *, completion: bool = True) -> None:
    """Puts the priced usage into a unary response body (in place)."""
    body["usage"] = priced_usage(body.get("usage"), charge, completion=completion)
