"""Tiers: what limits an account gets, from what it has purchased in total (configuration; the
defaults are the terms of service's). An admin may pin an account to a tier."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: int = Field(ge=0)
    min_purchased_usd: Decimal = Field(ge=0)
    rpm: int = Field(gt=0)
    model_rpm: int = Field(gt=0)
    tpm: int = Field(gt=0)

    @property
    def min_purchased_nanos(self) -> int:
        return int(self.min_purchased_usd * 10**9)


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier(tier=0, min_purchased_usd=Decimal(0), rpm=30, model_rpm=25, tpm=200_000),
    Tier(tier=1, min_purchased_usd=Decimal(10), rpm=60, model_rpm=50, tpm=1_000_000),
    Tier(tier=2, min_purchased_usd=Decimal(50), rpm=120, model_rpm=100, tpm=2_000_000),
    Tier(tier=3, min_purchased_usd=Decimal(250), rpm=200, model_rpm=150, tpm=5_000_000),
    Tier(tier=4, min_purchased_usd=Decimal(1000), rpm=300, model_rpm=200, tpm=10_000_000),
)


class TierTable:
    def __init__(self, tiers: tuple[Tier, ...]) -> None:
        ordered = tuple(sorted(tiers, key=lambda t: t.min_purchased_usd))
        if not ordered or ordered[0].min_purchased_usd != 0:
            raise ValueError("the tier table needs a tier reached at $0")
        if len({t.tier for t in ordered}) != len(ordered):
            raise ValueError("tier numbers must be distinct")
        self._tiers = ordered
        self._by_number = {t.tier: t for t in ordered}

    def for_purchases(self, total_purchased_nanos: int) -> Tier:
        reached = self._tiers[0]
        for tier in self._tiers:
            if total_purchased_nanos >= tier.min_purchased_nanos:
                reached = tier
        return reached

    def effective(self, total_purchased_nanos: int, pinned: int | None) -> Tier:
        if pinned is not None and pinned in self._by_number:
            return self._by_number[pinned]
        return self.for_purchases(total_purchased_nanos)

    def get(self, number: int) -> Tier | None:
        return self._by_number.get(number)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._tiers)
