"""Choosing deployments for a request: the order in which they are tried.

Weighted random: the first deployment is drawn by weight, the next from the rest by weight,
and so on, so failover visits every deployment at most once.
"""

from __future__ import annotations

import random

from core_service.catalog import Deployment, Model


class Router:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def candidates(self, model: Model) -> list[Deployment]:
        remaining = list(model.deployments)
        if len(remaining) == 1:
            return remaining
        ordered: list[Deployment] = []
        while remaining:
            pick = self._rng.choices(range(len(remaining)), [d.weight for d in remaining])[0]
            ordered.append(remaining.pop(pick))
        return ordered
