"""Tiers: what limits an account gets, from what it has purchased in total (configuration; the
defaults are the terms of service's). An admin may pin an account to a tier."""

from __future__ import annotations

from collections.abc import Iterator

from core_service.values import Tier


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

    def __iter__(self) -> Iterator[Tier]:
        return iter(self._tiers)
