"""Money, balances and ledger entries as protobuf messages."""

from __future__ import annotations

from core_service.billing.ledger import BalanceView, EntryKind
from core_service.billing.pricing import nanos_to_usd
from core_service.db.models import LedgerEntry
from core_service.edge.messages.accounts import timestamp
from kyma.accounting.v1 import accounting_service_pb2 as pb

_KINDS = {
    EntryKind.WELCOME_BONUS: pb.LEDGER_ENTRY_KIND_WELCOME_BONUS,
    EntryKind.PURCHASE: pb.LEDGER_ENTRY_KIND_PURCHASE,
    EntryKind.USAGE: pb.LEDGER_ENTRY_KIND_USAGE,
    EntryKind.REFERRAL_REWARD: pb.LEDGER_ENTRY_KIND_REFERRAL_REWARD,
    EntryKind.ADJUSTMENT: pb.LEDGER_ENTRY_KIND_ADJUSTMENT,
    EntryKind.CREDIT_RESET: pb.LEDGER_ENTRY_KIND_CREDIT_RESET,
}


def money(nanos: int) -> pb.Money:
    return pb.Money(nanos=nanos, usd=nanos_to_usd(nanos))


def balance_message(view: BalanceView) -> pb.Balance:
    return pb.Balance(
        balance=money(view.balance_nanos),
        held=money(view.held_nanos),
        available=money(view.available_nanos),
        total_purchased=money(view.total_purchased_nanos),
    )


def entry_message(entry: LedgerEntry, account_id: str) -> pb.LedgerEntry:
    """The entry as `account_id` sees it: positive when it added credit, negative when it spent."""
    signed = entry.amount_nanos if entry.credit_account == account_id else -entry.amount_nanos
    return pb.LedgerEntry(
        id=entry.id,
        kind=_KINDS.get(EntryKind(entry.kind), pb.LEDGER_ENTRY_KIND_UNSPECIFIED),
        amount=money(signed),
        reason=entry.reason,
        reference=entry.reference or "",
        created_at=timestamp(entry.created_at),
    )
