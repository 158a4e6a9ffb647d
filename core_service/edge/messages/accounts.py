"""Accounts, keys, sessions and terms as protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from core_service.accounts.sessions import SessionOwner
from core_service.accounts.store import KeyView
from core_service.billing.key_spend import KeySpendState, resets_at
from core_service.billing.pricing import nanos_to_usd
from core_service.db import models
from core_service.terms import TermsCatalogue
from kyma.accounting.v1 import accounting_service_pb2 as pb

_INTERVALS = {
    "daily": pb.CAP_INTERVAL_DAILY,
    "weekly": pb.CAP_INTERVAL_WEEKLY,
    "monthly": pb.CAP_INTERVAL_MONTHLY,
}
INTERVAL_NAMES = {value: name for name, value in _INTERVALS.items()}

_STATUS = {
    "active": pb.ACCOUNT_STATUS_ACTIVE,
    "suspended": pb.ACCOUNT_STATUS_SUSPENDED,
    "banned": pb.ACCOUNT_STATUS_BANNED,
}


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value)
    return message


def account_message(account: models.Account, *, tier: int) -> pb.Account:
    return pb.Account(
        id=account.id,
        email=account.email,
        status=_STATUS.get(account.status, pb.ACCOUNT_STATUS_UNSPECIFIED),
        tier=tier,
        created_at=timestamp(account.created_at),
        status_reason=account.status_reason or "",
        suspended_until=timestamp(account.suspended_until),
        referral_code=account.referral_code or "",
    )


def _money(nanos: int) -> pb.Money:
    return pb.Money(nanos=nanos, usd=nanos_to_usd(nanos))


def key_message(view: KeyView | models.ApiKey, now: datetime | None = None) -> pb.ApiKey:
    """A key with its limits and its spend in the cap's current period as of `now`."""
    if isinstance(view, models.ApiKey):
        view = KeyView(view, None)
    key, limits = view.key, view.limits
    message = pb.ApiKey(
        id=key.id,
        name=key.name,
        display_prefix=key.display_prefix,
        created_at=timestamp(key.created_at),
        revoked_at=timestamp(key.revoked_at),
        last_used_at=timestamp(key.last_used_at),
        expires_at=timestamp(limits.expires_at),
        allowed_models=sorted(limits.allowed_models or ()),
        cap_interval=_INTERVALS.get(limits.cap_interval or "", pb.CAP_INTERVAL_UNSPECIFIED),
    )
    if limits.spend_cap_nanos is not None:
        message.spend_cap.CopyFrom(_money(limits.spend_cap_nanos))
    spend = view.spend
    if spend is not None and now is not None:
        state = KeySpendState(
            key_id=key.id,
            cap_nanos=spend.cap_nanos,
            cap_interval=limits.cap_interval,
            held_nanos=spend.held_nanos,
            spent_total_nanos=spend.spent_total_nanos,
            spent_day_nanos=spend.spent_day_nanos,
            spent_day=spend.spent_day,
            spent_week_nanos=spend.spent_week_nanos,
            spent_week=spend.spent_week,
            spent_month_nanos=spend.spent_month_nanos,
            spent_month=spend.spent_month,
        )
        state.roll(now)  # a period that ended with no spend since shows as started again
        message.spent.CopyFrom(_money(state.spent()))
        message.held.CopyFrom(_money(state.held_nanos))
        reset = resets_at(limits.cap_interval, now)
        if reset is not None:
            message.cap_resets_at.FromDatetime(reset)
    return message


def notice_message(notice: models.AccountNotice) -> pb.Notice:
    return pb.Notice(
        message=notice.message, created_at=timestamp(notice.created_at), kind="warning"
    )


def session_message(owner: SessionOwner) -> pb.Session:
    return pb.Session(
        id=owner.session_id,
        account_id=owner.account_id,
        email=owner.email,
        csrf_token=owner.csrf_token,
        created_at=timestamp(owner.created_at),
        expires_at=timestamp(owner.expires_at),
    )


def terms_message(account: models.Account, terms: TermsCatalogue) -> pb.TermsAcceptance:
    current = terms.current.version
    return pb.TermsAcceptance(
        accepted_version=account.terms_version or "",
        accepted_at=timestamp(account.terms_accepted_at),
        current_version=current,
        needs_acceptance=account.terms_version != current,
        in_use_version=account.terms_in_use_version or "",
        in_use_since=timestamp(account.terms_in_use_since),
    )


def terms_notice(account: models.Account, terms: TermsCatalogue, link: str) -> pb.Notice | None:
    """The notice of newer terms than the account accepted (None when it accepted these)."""
    current = terms.current
    if account.terms_version == current.version:
        return None
    return pb.Notice(
        kind="terms_changed",
        created_at=timestamp(current.published_at),
        message=(
            f"The terms of service changed on {current.published_at.date().isoformat()} "
            f"(version {current.version}). Read them at {link}; continued use of Kyma means "
            "you accept them."
        ),
    )
