"""Tokens by kind: of the prompt, those read from the upstream's prompt cache and those written
to it; of the completion, the model's reasoning — kept apart in daily usage and in the request
log (each is billed at its own price, or shown apart). The request log also keeps the id of the
request's hold, which names its ledger entry (`usage:<hold id>`): a past request's charge is
found by one indexed lookup.

Columns only (with defaults, so existing rows read as "none of those"): on PostgreSQL adding a
column with a constant default rewrites nothing, and on the partitioned request log it reaches
every partition.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

_PARTS = ("cached_tokens", "cache_write_tokens", "reasoning_tokens")


def upgrade() -> None:
    for table in ("usage_daily", "request_logs"):
        for name in _PARTS:
            op.add_column(
                table,
                sa.Column(name, sa.BigInteger(), nullable=False, server_default=sa.text("0")),
            )
    op.add_column("request_logs", sa.Column("hold_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("request_logs", "hold_id")
    for table in ("usage_daily", "request_logs"):
        for name in _PARTS:
            op.drop_column(table, name)
