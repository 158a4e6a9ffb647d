"""Request logs: one row per API request, kept for a retention window.

On PostgreSQL the table is range-partitioned by `created_at`, one partition per UTC day named
`request_logs_pYYYYMMDD`, so retention drops whole days instead of deleting rows. There is no
DEFAULT partition (it would have to be scanned whenever a day is created); the writer and the
maintenance job create days ahead (`core_service.logs.retention`). There is no primary key:
ids need not be unique, and a partitioned table's key would have to include `created_at`.

Revision ID: 0006
Revises: 0005 (referrals, written at the same time; both were numbered 0005)
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Today's and the next two UTC days, by the database's clock.
_FIRST_PARTITIONS = """
DO $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    day date;
BEGIN
    FOR offset_days IN 0..2 LOOP
        day := today + offset_days;
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF request_logs FOR VALUES FROM (%L) TO (%L)',
            'request_logs_p' || to_char(day, 'YYYYMMDD'), day::timestamp, (day + 1)::timestamp
        );
    END LOOP;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "request_logs",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=True),
        sa.Column("key_id", sa.Text(), nullable=True),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("deployment", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("request_body", sa.Text(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_request_logs_account_id_created_at", "request_logs", ["account_id", "created_at"]
    )
    op.create_index("ix_request_logs_request_id", "request_logs", ["request_id"])
    op.create_index("ix_request_logs_created_at", "request_logs", ["created_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FIRST_PARTITIONS)


def downgrade() -> None:
    # On PostgreSQL this drops every partition with the parent.
    op.drop_table("request_logs")
