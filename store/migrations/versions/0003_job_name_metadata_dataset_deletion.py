"""jobs: the caller's `name` and `metadata`; `dataset_id` no longer a foreign key, so that a dataset can be
deleted while finished jobs that ran on it keep its id (an index on (dataset_id, status) answers "is it in use").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copy of the JSON type in store/models.py: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
# 0001 left the foreign key unnamed: PostgreSQL named it jobs_dataset_id_fkey; SQLite keeps no name, so batch
# mode reflects it under this convention's name to drop it.
FK = "jobs_dataset_id_fkey"
CONVENTION = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    with op.batch_alter_table("jobs", naming_convention=CONVENTION) as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.add_column(sa.Column("name", sa.String(200), nullable=True))
        batch.add_column(sa.Column("metadata", JSON, nullable=True))
    op.create_index("ix_jobs_dataset_id_status", "jobs", ["dataset_id", "status"])


def downgrade() -> None:
    """Fails while jobs of deleted datasets remain (the foreign key cannot hold for them): delete those jobs
    first (DELETE /v1/jobs/{id})."""
    op.drop_index("ix_jobs_dataset_id_status", "jobs")
    with op.batch_alter_table("jobs", naming_convention=CONVENTION) as batch:
        batch.drop_column("metadata")
        batch.drop_column("name")
        batch.create_foreign_key(FK, "datasets", ["dataset_id"], ["id"])
