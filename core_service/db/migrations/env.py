"""Alembic environment: Kyma runs migrations itself on start (core_service.db.engine.migrate),
handing the open connection over in config.attributes."""

from __future__ import annotations

from alembic import context

from core_service.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through core_service.db.engine.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
