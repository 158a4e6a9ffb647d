"""The status page: request outcomes per model (counted by the observer, flushed by a chore),
incidents, and the report that puts them together with the breakers' view."""

from __future__ import annotations

from dataclasses import dataclass

from core_service.clock import Clock
from core_service.composition.routing import Routing
from core_service.composition.storage import Storage
from core_service.status.incidents import Incidents
from core_service.status.outcomes import OutcomeCounter
from core_service.status.report import StatusReport


@dataclass(frozen=True)
class Status:
    outcomes: OutcomeCounter
    incidents: Incidents
    report: StatusReport


def open_status(clock: Clock, *, storage: Storage, routing: Routing) -> Status:
    outcomes = OutcomeCounter(storage.engine, clock)
    incidents = Incidents(storage.engine, clock)
    return Status(
        outcomes=outcomes,
        incidents=incidents,
        report=StatusReport(routing.catalogue, routing.router, outcomes, incidents, clock),
    )
