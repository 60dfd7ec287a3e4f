"""an export's accuracy check (the formats for devices): its figures on the export's row

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    report = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    with op.batch_alter_table("model_exports") as batch:
        batch.add_column(sa.Column("report", report, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_exports") as batch:
        batch.drop_column("report")
