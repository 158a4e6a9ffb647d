"""Payment provenance: the Checkout Sessions Kyma created (the only ones a webhook may credit,
for that account, amount and currency), and the signed sessions it was sent and did not credit.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "checkout_sessions",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkout_sessions"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_checkout_sessions_account_id_accounts"
        ),
    )
    op.create_index("ix_checkout_sessions_account_id", "checkout_sessions", ["account_id"])
    op.create_table(
        "ignored_payments",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("session_id", sa.String(255), nullable=True),
        sa.Column("account_id", sa.String(255), nullable=True),
        sa.Column("amount_total", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(16), nullable=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_ignored_payments"),
        sa.UniqueConstraint("event_id", name="uq_ignored_payments_event_id"),
    )


def downgrade() -> None:
    op.drop_table("ignored_payments")
    op.drop_index("ix_checkout_sessions_account_id", table_name="checkout_sessions")
    op.drop_table("checkout_sessions")
