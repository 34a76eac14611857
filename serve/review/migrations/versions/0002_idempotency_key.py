"""Idempotency key on model decisions: a decision parked while the database was away and
written again later (or by two replicas draining one spool) is recorded once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a plain ADD COLUMN (SQLite has it) and a unique index, not a table constraint: batch
    # mode would copy the table on SQLite and lose its append-only triggers
    op.add_column("moderation_decisions",
                  sa.Column("idempotency_key", sa.String(64), nullable=True))
    # NULLs never collide (reviewer decisions and rows written before this revision)
    op.create_index("ux_moderation_decisions_idempotency_key", "moderation_decisions",
                    ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_moderation_decisions_idempotency_key", "moderation_decisions")
    op.drop_column("moderation_decisions", "idempotency_key")
