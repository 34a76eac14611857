"""Alembic environment of the registry index: run migrations on the connection
`funnel.registry.index` passes in. Its own version table, so that the index can share a
database with the review queue (whose migrations use Alembic's default table)."""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "funnel_registry_alembic_version"

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True,
                  version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
