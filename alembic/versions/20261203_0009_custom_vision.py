"""the Custom Vision compatible API's projects, tags, images, image tags and iterations

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "cv_projects",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("domain_id", sa.Uuid(), nullable=False),
        sa.Column("classification_type", sa.String(length=16), nullable=False),
        sa.Column("target_export_platforms", _json(), nullable=False),
        sa.Column("lineage_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cv_projects")),
    )
    with op.batch_alter_table("cv_projects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cv_projects_owner"), ["owner"], unique=False)

    op.create_table(
        "cv_images",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["cv_projects.id"],
            name=op.f("fk_cv_images_project_id_cv_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cv_images")),
        sa.UniqueConstraint("project_id", "sha256", name=op.f("uq_cv_images_project_id_sha256")),
    )
    with op.batch_alter_table("cv_images", schema=None) as batch_op:
        batch_op.create_index(
            "ix_cv_images_project_id_created_at", ["project_id", "created_at"], unique=False
        )

    op.create_table(
        "cv_tags",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["cv_projects.id"],
            name=op.f("fk_cv_tags_project_id_cv_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cv_tags")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_cv_tags_project_id_name")),
    )
    with op.batch_alter_table("cv_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cv_tags_project_id"), ["project_id"], unique=False)

    op.create_table(
        "cv_image_tags",
        sa.Column("image_id", sa.Uuid(), nullable=False),
        sa.Column("tag_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["cv_images.id"],
            name=op.f("fk_cv_image_tags_image_id_cv_images"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tag_id"],
            ["cv_tags.id"],
            name=op.f("fk_cv_image_tags_tag_id_cv_tags"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", "tag_id", name=op.f("pk_cv_image_tags")),
    )
    with op.batch_alter_table("cv_image_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cv_image_tags_tag_id"), ["tag_id"], unique=False)

    op.create_table(
        "cv_iterations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("project_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("dataset_id", sa.Uuid(), nullable=True),
        sa.Column("training_type", sa.String(length=16), nullable=False),
        sa.Column("reserved_budget_in_hours", sa.Integer(), nullable=False),
        sa.Column("domain_id", sa.Uuid(), nullable=False),
        sa.Column("classification_type", sa.String(length=16), nullable=False),
        sa.Column("publish_name", sa.String(length=200), nullable=True),
        sa.Column("prediction_resource_id", sa.String(length=1024), nullable=True),
        sa.Column("export_token", sa.String(length=64), nullable=True),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["training_jobs.id"],
            name=op.f("fk_cv_iterations_job_id_training_jobs"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["cv_projects.id"],
            name=op.f("fk_cv_iterations_project_id_cv_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cv_iterations")),
        sa.UniqueConstraint(
            "project_id", "publish_name", name=op.f("uq_cv_iterations_project_id_publish_name")
        ),
        sa.UniqueConstraint("export_token", name=op.f("uq_cv_iterations_export_token")),
    )
    with op.batch_alter_table("cv_iterations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_cv_iterations_project_id"), ["project_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("cv_iterations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cv_iterations_project_id"))

    op.drop_table("cv_iterations")
    with op.batch_alter_table("cv_image_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cv_image_tags_tag_id"))

    op.drop_table("cv_image_tags")
    with op.batch_alter_table("cv_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cv_tags_project_id"))

    op.drop_table("cv_tags")
    with op.batch_alter_table("cv_images", schema=None) as batch_op:
        batch_op.drop_index("ix_cv_images_project_id_created_at")

    op.drop_table("cv_images")
    with op.batch_alter_table("cv_projects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cv_projects_owner"))

    op.drop_table("cv_projects")
