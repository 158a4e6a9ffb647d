"""Money under faults: core nodes with leases, holds that know their node and their last
checkpoint, a change feed of key and account events, and an index for pruning ended holds.

- `core_nodes`: one row per running core process, its heartbeat renewed every few seconds; a
  node whose heartbeat lapsed is taken for dead, and its open holds are settled by others at
  their last checkpoint.
- `credit_holds.node_id` and `checkpoint_*`: which node placed the hold, and the usage it last
  recorded for it (a stream records what it delivered at least every second).
- `account_events`: revocations, suspensions and tier changes, in order; every node follows the
  feed and drops what it cached about that key or account.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "core_nodes",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False, server_default=""),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    )
    with op.batch_alter_table("credit_holds") as batch:
        batch.add_column(sa.Column("node_id", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("checkpoint_nanos", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column(
                "checkpoint_prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"
            )
        )
        batch.add_column(
            sa.Column(
                "checkpoint_completion_tokens",
                sa.BigInteger(),
                nullable=False,
                server_default="0",
            )
        )
        batch.add_column(sa.Column("checkpoint_at", UTCDateTime(), nullable=True))
    op.create_index("ix_credit_holds_node_open", "credit_holds", ["node_id", "status"])
    op.create_index("ix_credit_holds_ended_at", "credit_holds", ["ended_at"])
    op.create_table(
        "account_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("account_id", sa.String(32), nullable=True),
        sa.Column("key_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_account_events_created_at", "account_events", ["created_at"])


def downgrade() -> None:
    op.drop_table("account_events")
    op.drop_index("ix_credit_holds_ended_at", "credit_holds")
    op.drop_index("ix_credit_holds_node_open", "credit_holds")
    with op.batch_alter_table("credit_holds") as batch:
        for column in (
            "checkpoint_at",
            "checkpoint_completion_tokens",
            "checkpoint_prompt_tokens",
            "checkpoint_nanos",
            "node_id",
        ):
            batch.drop_column(column)
    op.drop_table("core_nodes")
