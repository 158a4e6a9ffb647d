"""The status page's facts, put together: each model of the catalogue with its availability
over the last hour and day (from real request outcomes, every node's) and its state as this
node's breakers see its deployments, and the incidents to show. The answer is kept for a few
seconds: the page is public, and reading it must not cost the database a query per visit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from core_service.catalog import CatalogHolder
from core_service.clock import Clock
from core_service.db.models import Incident
from core_service.routing.health import BreakerState
from core_service.routing.router import Router
from core_service.status.incidents import Incidents
from core_service.status.outcomes import Availability, OutcomeCounter

CACHE_SECONDS = 10.0
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


class ModelState(StrEnum):
    OPERATIONAL = "operational"  # every deployment takes requests
    DEGRADED = "degraded"  # some are ejected (or being probed back in)
    DOWN = "down"  # every deployment is ejected


@dataclass(frozen=True)
class ModelReport:
    model: str
    last_hour: Availability
    last_day: Availability
    state: ModelState


@dataclass(frozen=True)
class StatusView:
    generated_at: datetime
    models: list[ModelReport]
    incidents: list[Incident]


class StatusReport:
    def __init__(
        self,
        catalogue: CatalogHolder,
        router: Router,
        outcomes: OutcomeCounter,
        incidents: Incidents,
        clock: Clock,
    ) -> None:
        self._catalogue = catalogue
        self._router = router
        self._outcomes = outcomes
        self._incidents = incidents
        self._clock = clock
        self._cached: tuple[float, StatusView] | None = None

    def forget(self) -> None:
        """Drop the kept answer (an incident changed on this node)."""
        self._cached = None

    async def view(self) -> StatusView:
        at = self._clock.monotonic()
        if self._cached is not None and self._cached[0] > at:
            return self._cached[1]
        models = self._catalogue.models()
        measured = await self._outcomes.availability(HOUR, DAY)
        states: dict[str, list[BreakerState]] = {}
        for status in self._router.status(models):
            states.setdefault(status.model, []).append(status.state)
        none = Availability(0, 0)
        view = StatusView(
            generated_at=self._clock.now(),
            models=[
                ModelReport(
                    model=model.name,
                    last_hour=measured.get(model.name, [none, none])[0],
                    last_day=measured.get(model.name, [none, none])[1],
                    state=_state(states.get(model.name, [])),
                )
                for model in models
            ],
            incidents=await self._incidents.public(),
        )
        self._cached = (at + CACHE_SECONDS, view)
        return view


def _state(deployments: list[BreakerState]) -> ModelState:
    if deployments and all(state is BreakerState.OPEN for state in deployments):
        return ModelState.DOWN
    if any(state is not BreakerState.CLOSED for state in deployments):
        return ModelState.DEGRADED
    return ModelState.OPERATIONAL
