"""Finding accounts as admins do: by status, and by the sign-up signals they share (the same
sign-up IP or client fingerprint as another account), for abuse review."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import aliased

from core_service.db.models import Account
from core_service.errors import InvalidRequest, NotFound


@dataclass(frozen=True)
class Listed:
    account: Account
    sharing_signals: int  # other accounts with its sign-up IP or fingerprint


def _sharing_count():  # type: ignore[no-untyped-def]
    other = aliased(Account)
    return (
        select(func.count())
        .where(
            other.id != Account.id,
            or_(
                and_(Account.signup_ip.is_not(None), other.signup_ip == Account.signup_ip),
                and_(
                    Account.signup_fingerprint.is_not(None),
                    other.signup_fingerprint == Account.signup_fingerprint,
                ),
            ),
        )
        .correlate(Account)
        .scalar_subquery()
    )


class AccountDirectory:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def search(
        self, *, status: str | None, shared_signals: bool, limit: int, after_id: str | None
    ) -> list[Listed]:
        sharing = _sharing_count().label("sharing")
        statement = (
            select(Account, sharing)
            .order_by(Account.created_at.desc(), Account.id.desc())
            .limit(limit)
        )
        if status:
            statement = statement.where(Account.status == status)
        if shared_signals:
            statement = statement.where(sharing > 0)
        async with self._engine.connect() as conn:
            if after_id:
                anchor = (
                    await conn.execute(
                        select(Account.created_at, Account.id).where(Account.id == after_id)
                    )
                ).one_or_none()
                if anchor is None:
                    raise InvalidRequest("No account with that id to page after.", param="after_id")
                statement = statement.where(
                    tuple_(Account.created_at, Account.id) < tuple_(anchor.created_at, anchor.id)
                )
            rows = (await conn.execute(statement)).all()
        return [Listed(Account(**_account_fields(row)), row.sharing) for row in rows]

    async def details(self, account_id: str) -> tuple[Listed, list[Listed]]:
        """The account and the accounts sharing a sign-up signal with it."""
        sharing = _sharing_count().label("sharing")
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(select(Account, sharing).where(Account.id == account_id))
            ).one_or_none()
            if row is None:
                raise NotFound(f"No account {account_id}.", param="account_id")
            account = Account(**_account_fields(row))
            conditions = []
            if account.signup_ip:
                conditions.append(Account.signup_ip == account.signup_ip)
            if account.signup_fingerprint:
                conditions.append(Account.signup_fingerprint == account.signup_fingerprint)
            related: list[Listed] = []
            if conditions:
                rows = (
                    await conn.execute(
                        select(Account, sharing)
                        .where(Account.id != account_id, or_(*conditions))
                        .order_by(Account.created_at.desc())
                        .limit(100)
                    )
                ).all()
                related = [Listed(Account(**_account_fields(r)), r.sharing) for r in rows]
        return Listed(account, row.sharing), related


def _account_fields(row) -> dict:  # type: ignore[no-untyped-def]
    return {column.key: getattr(row, column.key) for column in Account.__table__.columns}
