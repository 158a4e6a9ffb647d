"""Tiers follow total purchases (no stored tier); admins can pin an account's tier.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("pinned_tier", sa.Integer(), nullable=True))
        batch.drop_column("tier")


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("tier", sa.Integer(), nullable=False, server_default="0"))
        batch.drop_column("pinned_tier")
