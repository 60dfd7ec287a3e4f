"""dataset versions (lineage, parent, diff), the dataset version a job trained on, review
thresholds of model names and the review queue

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[object]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    # Every dataset uploaded so far is the first version of a lineage of its own. Columns are
    # only added (no table rebuild on SQLite: rebuilding `datasets` would trip the foreign
    # keys of the jobs that use it).
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a NOT NULL column only with a default; every row gets its own id next.
        op.add_column(
            "datasets",
            sa.Column("lineage_id", sa.Uuid(), nullable=False, server_default="0" * 32),
        )
        op.execute("UPDATE datasets SET lineage_id = id")
    else:
        op.add_column("datasets", sa.Column("lineage_id", sa.Uuid(), nullable=True))
        op.execute("UPDATE datasets SET lineage_id = id")
        op.alter_column("datasets", "lineage_id", existing_type=sa.Uuid(), nullable=False)
    op.add_column(
        "datasets", sa.Column("version", sa.Integer(), server_default="1", nullable=False)
    )
    op.add_column("datasets", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column("datasets", sa.Column("diff", _json(), nullable=True))
    op.create_index(op.f("ix_datasets_lineage_id"), "datasets", ["lineage_id"])
    op.create_index(
        "uq_datasets_lineage_id_version", "datasets", ["lineage_id", "version"], unique=True
    )
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("dataset_version", sa.Integer(), nullable=True))
    op.execute("UPDATE training_jobs SET dataset_version = 1 WHERE dataset_id IS NOT NULL")
    with op.batch_alter_table("model_names") as batch:
        batch.add_column(sa.Column("review_threshold", sa.Float(), nullable=True))

    op.create_table(
        "review_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_bytes", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=True),
        sa.Column("scores", _json(), nullable=False),
        sa.Column("top_label", sa.String(length=200), nullable=False),
        sa.Column("top_probability", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labeled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.UniqueConstraint(
            "owner",
            "model_name",
            "image_sha256",
            name=op.f("uq_review_items_owner_model_name_image_sha256"),
        ),
    )
    op.create_index(op.f("ix_review_items_owner"), "review_items", ["owner"])
    op.create_index(op.f("ix_review_items_model_name"), "review_items", ["model_name"])
    op.create_index("ix_review_items_owner_created_at", "review_items", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_review_items_owner_created_at", table_name="review_items")
    op.drop_index(op.f("ix_review_items_model_name"), table_name="review_items")
    op.drop_index(op.f("ix_review_items_owner"), table_name="review_items")
    op.drop_table("review_items")
    with op.batch_alter_table("model_names") as batch:
        batch.drop_column("review_threshold")
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("dataset_version")
    op.drop_index("uq_datasets_lineage_id_version", table_name="datasets")
    op.drop_index(op.f("ix_datasets_lineage_id"), table_name="datasets")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("diff")
        batch.drop_column("parent_id")
        batch.drop_column("version")
        batch.drop_column("lineage_id")
