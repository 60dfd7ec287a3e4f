"""model exports built by workers (a version's SavedModel archive); model names that a job
claimed and that hold nothing are given back

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_exports",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("version_id", sa.Uuid(), nullable=False),
        sa.Column("format", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=1024), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(length=255), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_exports_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_exports")),
        sa.UniqueConstraint(
            "version_id", "format", name=op.f("uq_model_exports_version_id_format")
        ),
    )
    op.create_index(op.f("ix_model_exports_version_id"), "model_exports", ["version_id"])
    # Names claimed by jobs that ended without a version were kept for good; nothing holds
    # these (no version ever numbered, no threshold, no job of the owner waiting).
    op.execute(
        "DELETE FROM model_names WHERE last_version = 0 AND review_threshold IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM model_versions v WHERE v.name = model_names.name) "
        "AND NOT EXISTS (SELECT 1 FROM training_jobs j WHERE j.owner = model_names.owner "
        "AND j.status IN ('queued', 'running'))"
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_model_exports_version_id"), table_name="model_exports")
    op.drop_table("model_exports")
