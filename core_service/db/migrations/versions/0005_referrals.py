"""Referral codes and referrals.

Revision ID: 0005
Revises: 0004
"""

import secrets

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Kept in step with core_service/referrals/codes.py (a migration must not change later).
_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("referral_code", sa.String(16), nullable=True))
        batch.create_unique_constraint("uq_accounts_referral_code", ["referral_code"])
    connection = op.get_bind()
    for (account_id,) in connection.execute(sa.text("SELECT id FROM accounts")).all():
        code = "".join(secrets.choice(_ALPHABET) for _ in range(8))
        connection.execute(
            sa.text("UPDATE accounts SET referral_code = :code WHERE id = :id"),
            {"code": code, "id": account_id},
        )
    op.create_table(
        "referrals",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("referrer_id", sa.String(32), nullable=False),
        sa.Column("referred_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("flag_reason", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("verified_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_referrals"),
        sa.UniqueConstraint("referred_id", name="uq_referrals_referred_id"),
        sa.ForeignKeyConstraint(
            ["referrer_id"], ["accounts.id"], name="fk_referrals_referrer_id_accounts"
        ),
        sa.ForeignKeyConstraint(
            ["referred_id"], ["accounts.id"], name="fk_referrals_referred_id_accounts"
        ),
    )
    op.create_index("ix_referrals_referrer_id", "referrals", ["referrer_id"])
    op.create_index("ix_referrals_status", "referrals", ["status"])


def downgrade() -> None:
    op.drop_table("referrals")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_constraint("uq_accounts_referral_code", type_="unique")
        batch.drop_column("referral_code")
