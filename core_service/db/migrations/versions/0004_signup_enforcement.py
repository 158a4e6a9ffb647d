"""Sign-up codes and signals, enforcement state, notices and the admin audit log.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(2000), nullable=True))
        batch.add_column(sa.Column("suspended_until", UTCDateTime(), nullable=True))
        batch.add_column(
            sa.Column("referrals_revoked", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("signup_ip", sa.String(64), nullable=True))
        batch.add_column(sa.Column("signup_fingerprint", sa.String(200), nullable=True))
        batch.create_index("ix_accounts_signup_ip", ["signup_ip"])
        batch.create_index("ix_accounts_signup_fingerprint", ["signup_fingerprint"])
        batch.create_index("ix_accounts_status", ["status"])
    op.create_table(
        "signup_codes",
        sa.Column("email_canonical", sa.String(320), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("referral_code", sa.String(64), nullable=True),
        sa.Column("signup_ip", sa.String(64), nullable=True),
        sa.Column("signup_fingerprint", sa.String(200), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email_canonical", name="pk_signup_codes"),
    )
    op.create_table(
        "account_notices",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("message", sa.String(2000), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_account_notices"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_account_notices_account_id_accounts"
        ),
    )
    op.create_index("ix_account_notices_account_id", "account_notices", ["account_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("details", sa.String(2000), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_account_id", "audit_log", ["account_id", "id"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("account_notices")
    op.drop_table("signup_codes")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_index("ix_accounts_status")
        batch.drop_index("ix_accounts_signup_fingerprint")
        batch.drop_index("ix_accounts_signup_ip")
        for column in (
            "signup_fingerprint",
            "signup_ip",
            "referrals_revoked",
            "suspended_until",
            "status_reason",
        ):
            batch.drop_column(column)
