"""Incidents on the public status page: posted, updated and resolved by admins, each change
written to the audit log in the same transaction (who, when, what they said). The terms promise
to "communicate openly about issues"; this is where that happens."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core_service.audit import audit_in
from core_service.clock import Clock
from core_service.db.models import AuditEntry, Incident
from core_service.errors import InvalidRequest, NotFound

STATUSES = ("investigating", "identified", "monitoring", "resolved")
MAX_TITLE = 200
MAX_BODY = 4000
# Resolved incidents stay on the public page this long.
SHOWN_AFTER_RESOLVED = timedelta(days=14)


def _text(value: str, what: str, limit: int) -> str:
    text = value.strip()
    if not text:
        raise InvalidRequest(f"The incident's {what} is required.", param=what)
    if len(text) > limit:
        raise InvalidRequest(f"The incident's {what} is up to {limit} characters.", param=what)
    return text


class Incidents:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock

    async def post(
        self, title: str, body: str, *, status: str, actor: str
    ) -> tuple[Incident, AuditEntry]:
        title, body = _text(title, "title", MAX_TITLE), _text(body, "body", MAX_BODY)
        if status not in STATUSES[:-1]:
            raise InvalidRequest(
                "A new incident is investigating, identified or monitoring.", param="status"
            )
        now = self._clock.now()
        async with self._engine.begin() as conn:
            incident_id = await conn.scalar(
                insert(Incident)
                .values(title=title, status=status, body=body, created_at=now, updated_at=now)
                .returning(Incident.id)
            )
            audit = await audit_in(
                conn,
                now,
                actor=actor,
                action="incident_post",
                account_id=None,
                reason=body,
                details=f"incident {incident_id} ({status}): {title}",
            )
        return await self._get(int(incident_id or 0)), audit

    async def update(
        self, incident_id: int, body: str, *, status: str | None, title: str | None, actor: str
    ) -> tuple[Incident, AuditEntry]:
        body = _text(body, "body", MAX_BODY)
        values: dict[str, object] = {"body": body, "updated_at": self._clock.now()}
        if title:
            values["title"] = _text(title, "title", MAX_TITLE)
        if status is not None:
            if status not in STATUSES:
                raise InvalidRequest(f"status is one of {', '.join(STATUSES)}.", param="status")
            values["status"] = status
            if status == "resolved":
                values["resolved_at"] = values["updated_at"]
        now = self._clock.now()
        async with self._engine.begin() as conn:
            changed = await conn.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.resolved_at.is_(None))
                .values(**values)
            )
            if not changed.rowcount:
                found = await conn.scalar(select(Incident.id).where(Incident.id == incident_id))
                if found is None:
                    raise NotFound(f"No incident {incident_id}.", param="id")
                raise InvalidRequest(f"Incident {incident_id} is resolved already.", param="id")
            audit = await audit_in(
                conn,
                now,
                actor=actor,
                action="incident_resolve" if status == "resolved" else "incident_update",
                account_id=None,
                reason=body,
                details=f"incident {incident_id}" + (f" now {status}" if status else ""),
            )
        return await self._get(incident_id), audit

    async def resolve(
        self, incident_id: int, body: str, *, actor: str
    ) -> tuple[Incident, AuditEntry]:
        return await self.update(
            incident_id, body or "Resolved.", status="resolved", title=None, actor=actor
        )

    async def _get(self, incident_id: int) -> Incident:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(Incident).where(Incident.id == incident_id))).one()
        return Incident(**row._mapping)

    async def listed(self, *, include_resolved: bool, limit: int = 100) -> list[Incident]:
        """Newest first: open ones, and resolved ones too when asked."""
        statement = select(Incident).order_by(Incident.id.desc()).limit(limit)
        if not include_resolved:
            statement = statement.where(Incident.resolved_at.is_(None))
        async with self._engine.connect() as conn:
            return [Incident(**row._mapping) for row in await conn.execute(statement)]

    async def public(self) -> list[Incident]:
        """What the status page shows: open incidents and those resolved lately."""
        since = self._clock.now() - SHOWN_AFTER_RESOLVED
        statement = (
            select(Incident)
            .where(or_(Incident.resolved_at.is_(None), Incident.resolved_at >= since))
            .order_by(Incident.id.desc())
            .limit(50)
        )
        async with self._engine.connect() as conn:
            return [Incident(**row._mapping) for row in await conn.execute(statement)]
