"""Alembic environment: the engine comes from the caller (``upgrade_to_head``)."""

from __future__ import annotations

from alembic import context

from fleet_server.db.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=engine.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
