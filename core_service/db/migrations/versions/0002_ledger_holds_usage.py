"""Credit ledger, balances, holds and daily usage.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("debit_account", sa.String(64), nullable=False),
        sa.Column("credit_account", sa.String(64), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("reference", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_ledger_entries"),
        sa.UniqueConstraint("idempotency_key", name="uq_ledger_entries_idempotency_key"),
        sa.CheckConstraint("amount_nanos > 0", name="amount_positive"),
        sa.CheckConstraint("debit_account <> credit_account", name="distinct_sides"),
    )
    op.create_index("ix_ledger_entries_debit_account", "ledger_entries", ["debit_account", "id"])
    op.create_index("ix_ledger_entries_credit_account", "ledger_entries", ["credit_account", "id"])
    op.create_table(
        "balances",
        sa.Column("ledger_account", sa.String(64), nullable=False),
        sa.Column("balance_nanos", sa.BigInteger(), nullable=False),
        sa.Column("held_nanos", sa.BigInteger(), nullable=False),
        sa.Column("total_purchased_nanos", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("ledger_account", name="pk_balances"),
    )
    op.create_table(
        "credit_holds",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("charged_nanos", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_credit_holds"),
        sa.CheckConstraint("amount_nanos >= 0", name="amount_non_negative"),
    )
    op.create_index("ix_credit_holds_open", "credit_holds", ["status", "expires_at"])
    op.create_index("ix_credit_holds_account_id", "credit_holds", ["account_id"])
    op.create_table(
        "usage_daily",
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("estimated_requests", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "day", "model", name="pk_usage_daily"),
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_table("credit_holds")
    op.drop_table("balances")
    op.drop_table("ledger_entries")
