"""When a late settlement was reconciled with an expired hold.

A hold whose node was taken for dead expires at its last checkpoint; the settlement its node
sends later is reconciled once. Whether it already was is recorded on the hold itself: a late
settlement that owed nothing more writes no ledger entry, so the ledger cannot tell.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from core_service.db.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credit_holds") as batch:
        batch.add_column(sa.Column("late_settled_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credit_holds") as batch:
        batch.drop_column("late_settled_at")
