"""The limits an owner gives a key — a spend cap with an optional calendar interval, an expiry,
a model allow-list — as asked for (on creation, or as changes) and as stored: the cap and its
interval on the key's spend row (decided with every hold, `billing/key_spend.py`), the expiry
and allow-list on the key (checked when the key authenticates and when a model is chosen).
Limits only ever restrict: nothing here touches the account's own limits or credit."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from core_service.billing.pricing import parse_usd_nanos
from core_service.errors import InvalidRequest
from core_service.values import CAP_INTERVALS, CapInterval, KeyLimits

MAX_ALLOWED_MODELS = 100
MAX_MODEL_NAME = 200
# The fields a change may name.
FIELDS = frozenset({"spend_cap_usd", "cap_interval", "expires_at", "allowed_models"})


@dataclass(frozen=True)
class LimitChanges:
    """Limits as asked for: `fields` says which are given (an absent one stays as it is; a
    given one that is empty clears that limit)."""

    fields: frozenset[str] = frozenset()
    spend_cap_usd: str = ""
    cap_interval: str = ""
    expires_at: datetime | None = None
    allowed_models: tuple[str, ...] = field(default_factory=tuple)


def column_values(
    changes: LimitChanges, *, now: datetime, model_exists: Callable[[str], bool]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated changes as column values: (of the key, of its spend row)."""
    key: dict[str, Any] = {}
    spend: dict[str, Any] = {}
    if "spend_cap_usd" in changes.fields:
        text = changes.spend_cap_usd.strip()
        spend["cap_nanos"] = parse_usd_nanos(text, param="spend_cap_usd") if text else None
    if "cap_interval" in changes.fields:
        spend["cap_interval"] = _interval(changes.cap_interval)
    if "expires_at" in changes.fields:
        if changes.expires_at is not None and changes.expires_at <= now:
            raise InvalidRequest("expires_at must be in the future.", param="expires_at")
        key["expires_at"] = changes.expires_at
    if "allowed_models" in changes.fields:
        key["allowed_models"] = _models(changes.allowed_models, model_exists)
    return key, spend


def _interval(value: str) -> CapInterval | None:
    value = value.strip().lower()
    if not value:
        return None
    for interval in CAP_INTERVALS:
        if value == interval:
            return interval
    raise InvalidRequest(
        "cap_interval is one of daily, weekly, monthly, or null (the cap never resets).",
        param="cap_interval",
    )


def _models(names: Iterable[str], model_exists: Callable[[str], bool]) -> str | None:
    chosen = sorted({name.strip() for name in names})
    if not chosen:
        return None
    if len(chosen) > MAX_ALLOWED_MODELS:
        raise InvalidRequest(
            f"allowed_models names at most {MAX_ALLOWED_MODELS} models.", param="allowed_models"
        )
    for name in chosen:
        if not name or len(name) > MAX_MODEL_NAME or not name.isprintable():
            raise InvalidRequest("allowed_models holds model names.", param="allowed_models")
        if not model_exists(name):
            raise InvalidRequest(
                f"allowed_models: there is no model '{name}' (see GET /v1/models).",
                param="allowed_models",
            )
    return json.dumps(chosen)


def stored_limits(
    *,
    cap_nanos: int | None,
    cap_interval: str | None,
    expires_at: datetime | None,
    allowed_models: str | None,
) -> KeyLimits:
    """A key's limits from its columns."""
    return KeyLimits(
        spend_cap_nanos=cap_nanos,
        cap_interval=next((i for i in CAP_INTERVALS if i == cap_interval), None),
        expires_at=expires_at,
        allowed_models=frozenset(json.loads(allowed_models)) if allowed_models else None,
    )
