"""rounds: the round's chance metric and the measured worth of each module type (pruning.RoundRecord's
chance_metric and type_values).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copy of the JSON type in store/models.py: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("chance_metric", sa.Double(), nullable=True))
        batch.add_column(sa.Column("type_values", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("type_values")
        batch.drop_column("chance_metric")
