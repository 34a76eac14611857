"""Registry index: bundle versions, their files' checksums, where they serve, the audit.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_bundles",
        sa.Column("version", sa.String(128), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trained_by", sa.Text(), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(128), nullable=True),
        sa.Column("parent_version", sa.String(128), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pushed_by", sa.String(128), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("promoted_by", sa.String(128), nullable=True),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_by", sa.String(128), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status in ('pushing', 'staged', 'serving', 'retired')",
                           name="ck_registry_status"),
    )
    op.create_table(
        "registry_files",
        sa.Column("version", sa.String(128),
                  sa.ForeignKey("registry_bundles.version", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("path", sa.String(512), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "registry_serving",
        sa.Column("version", sa.String(128),
                  sa.ForeignKey("registry_bundles.version", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("stage", sa.String(32), primary_key=True),
        sa.Column("variant", sa.String(64), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(128), nullable=False, index=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    for table in ("registry_events", "registry_serving", "registry_files", "registry_bundles"):
        op.drop_table(table)
