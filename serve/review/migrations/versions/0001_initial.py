"""Review queue, moderation decisions (append-only audit).

Revision ID: 0001
Revises:
Create Date: 2026-11-23
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
        "review_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("content_id", sa.String(128), nullable=False, index=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("has_image", sa.Boolean(), nullable=False),
        sa.Column("author_id", sa.BigInteger(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("flagged_labels", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.CheckConstraint("status in ('pending', 'allow', 'block')", name="ck_review_status"),
    )
    op.create_table(
        "moderation_decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("content_id", sa.String(128), nullable=False, index=True),
        sa.Column("review_item_id", sa.BigInteger(), sa.ForeignKey("review_items.id"),
                  nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("source in ('model', 'reviewer')", name="ck_decision_source"),
        sa.CheckConstraint("decision in ('allow', 'review', 'block')", name="ck_decision"),
    )
    # The audit is append-only in the database itself, not only by convention in the code.
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER moderation_decisions_no_{verb.lower()} BEFORE {verb} "
                       "ON moderation_decisions BEGIN SELECT RAISE(ABORT, "
                       "'moderation_decisions is append-only'); END")
    elif bind.dialect.name == "postgresql":
        op.execute("CREATE OR REPLACE FUNCTION funnel_append_only() RETURNS trigger AS $$ "
                   "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$ "
                   "LANGUAGE plpgsql")
        op.execute("CREATE TRIGGER moderation_decisions_append_only BEFORE UPDATE OR DELETE "
                   "ON moderation_decisions FOR EACH ROW EXECUTE FUNCTION funnel_append_only()")


def downgrade() -> None:
    op.drop_table("moderation_decisions")
    op.drop_table("review_items")
