"""Accounts and keys as protobuf messages."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from core_service.db import models
from kyma.accounting.v1 import accounting_service_pb2 as pb

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


def key_message(key: models.ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        id=key.id,
        name=key.name,
        display_prefix=key.display_prefix,
        created_at=timestamp(key.created_at),
        revoked_at=timestamp(key.revoked_at),
        last_used_at=timestamp(key.last_used_at),
    )


def notice_message(notice: models.AccountNotice) -> pb.Notice:
    return pb.Notice(message=notice.message, created_at=timestamp(notice.created_at))
