"""What the web console needs from the core: web sessions and sign-in codes, key limits (with
each key's spend counted beside its account's balance, in the same batches), the terms each
account accepted, low-balance alerts, and the status page (request outcomes per model and
minute, incidents).

Every existing key gets its spend row (`key_spend`) here: the hold stores lock and update it
with the account's balance row, and expect it to exist from the key's first request on.

Revision ID: 0012
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("last_used_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
        sa.Column("created_ip", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_web_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_web_sessions_token_hash"),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_web_sessions_account_id_accounts"
        ),
    )
    op.create_index("ix_web_sessions_account_id", "web_sessions", ["account_id"])
    op.create_index("ix_web_sessions_expires_at", "web_sessions", ["expires_at"])
    with op.batch_alter_table("signup_codes") as batch:
        batch.add_column(
            sa.Column("purpose", sa.String(16), nullable=False, server_default="signup")
        )
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("allowed_models", sa.Text(), nullable=True))
    op.create_table(
        "key_spend",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=False),
        sa.Column("cap_nanos", sa.BigInteger(), nullable=True),
        sa.Column("cap_interval", sa.String(16), nullable=True),
        sa.Column("held_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("spent_total_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("spent_day_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("spent_day", sa.Date(), nullable=True),
        sa.Column("spent_week_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("spent_week", sa.Date(), nullable=True),
        sa.Column("spent_month_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("spent_month", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_key_spend"),
    )
    op.execute("INSERT INTO key_spend (key_id, account_id) SELECT id, account_id FROM api_keys")
    with op.batch_alter_table("credit_holds") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("terms_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("terms_accepted_at", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("terms_in_use_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("terms_in_use_since", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("low_balance_threshold_nanos", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("low_balance_alerted_at", UTCDateTime(), nullable=True))
        batch.create_index("ix_accounts_low_balance_alerted_at", ["low_balance_alerted_at"])
    op.create_table(
        "incidents",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("body", sa.String(4000), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_incidents"),
    )
    op.create_index("ix_incidents_resolved_at", "incidents", ["resolved_at"])
    op.create_table(
        "model_outcomes",
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("minute", UTCDateTime(), nullable=False),
        sa.Column("answered", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "minute", name="pk_model_outcomes"),
    )
    op.create_index("ix_model_outcomes_minute", "model_outcomes", ["minute"])


def downgrade() -> None:
    op.drop_table("model_outcomes")
    op.drop_table("incidents")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_index("ix_accounts_low_balance_alerted_at")
        for column in (
            "low_balance_alerted_at",
            "low_balance_threshold_nanos",
            "terms_in_use_since",
            "terms_in_use_version",
            "terms_accepted_at",
            "terms_version",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("credit_holds") as batch:
        batch.drop_column("key_id")
    op.drop_table("key_spend")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("allowed_models")
        batch.drop_column("expires_at")
    with op.batch_alter_table("signup_codes") as batch:
        batch.drop_column("purpose")
    op.drop_table("web_sessions")
