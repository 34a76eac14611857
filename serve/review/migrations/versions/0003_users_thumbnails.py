"""Console accounts (people who review and administer), and review items' thumbnails.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        # argon2id, PHC string format (serve/users/passwords.py); never the password itself
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        # bumped by rotate and disable: a session signed for an older value is refused
        sa.Column("credential_version", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role in ('reviewer', 'admin')", name="ck_console_user_role"),
    )
    # a plain ADD COLUMN (no batch mode: it would copy the table and lose nothing here, but
    # the decisions table's triggers are kept the same way in 0002)
    op.add_column("review_items", sa.Column("thumbnail", sa.LargeBinary(), nullable=True))
    op.add_column("review_items",
                  sa.Column("thumbnail_type", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("review_items", "thumbnail_type")
    op.drop_column("review_items", "thumbnail")
    op.drop_table("console_users")
