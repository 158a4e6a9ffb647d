"""Stored responses (OpenAI's Responses API with `store`) live in the request log.

A stored response is its request's log row: `response_id` is the id it is retrieved by (null
when the client did not store it, or deleted it), `previous_response_id` the stored response
it continues. They live and die with the row: retention purges them with the logs.

Revision ID: 0013 (given 0011; renumbered after main's 0010, 0011 and 0012)
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # On PostgreSQL the partitioned parent passes new columns and indexes to every partition.
    op.add_column("request_logs", sa.Column("response_id", sa.Text(), nullable=True))
    op.add_column("request_logs", sa.Column("previous_response_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_request_logs_response_id",
        "request_logs",
        ["response_id"],
        postgresql_where=sa.text("response_id IS NOT NULL"),
        sqlite_where=sa.text("response_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_request_logs_response_id", table_name="request_logs")
    with op.batch_alter_table("request_logs") as batch:
        batch.drop_column("previous_response_id")
        batch.drop_column("response_id")
