"""model names with their owner and the last version number handed out

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_names",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("last_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_model_names")),
    )
    op.create_index(op.f("ix_model_names_owner"), "model_names", ["owner"])
    # Every existing name belongs to the owner of its first version (where two owners share a
    # name from before this migration, the later one's versions stay readable to them but
    # the name is the first owner's from now on).
    op.execute(
        """
        INSERT INTO model_names (name, owner, last_version, created_at)
        SELECT v.name,
               (SELECT first.owner FROM model_versions AS first
                 WHERE first.name = v.name ORDER BY first.version LIMIT 1),
               MAX(v.version), MIN(v.created_at)
          FROM model_versions AS v
         GROUP BY v.name
        """
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_model_names_owner"), table_name="model_names")
    op.drop_table("model_names")
