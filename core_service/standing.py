"""Whether an account may act: suspended and banned accounts are refused (403) with the reason
and, for a suspension, its end."""

from __future__ import annotations

from datetime import datetime

from core_service.errors import AccountBanned, AccountSuspended
from core_service.values import Principal


def check_in_good_standing(principal: Principal, now: datetime) -> None:
    """Refuse what a suspended or banned account asks for; a suspension whose end has passed
    no longer counts."""
    reason = principal.status_reason or "a violation of the terms of service"
    if principal.account_status == "banned":
        raise AccountBanned(f"This account is permanently banned: {reason}.")
    until = principal.suspended_until
    if principal.account_status == "suspended" and (until is None or until > now):
        raise AccountSuspended(
            f"This account is suspended until {until.isoformat() if until else 'further notice'}: "
            f"{reason}.",
            until=until,
        )
