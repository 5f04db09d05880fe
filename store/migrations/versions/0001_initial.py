"""Initial tables: api_keys, datasets, jobs, job_events, rounds, artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in store/models.py: a migration must not change when the models do.
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("revoked_at", TIME, nullable=True),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("columns", JSON, nullable=False),
        sa.Column("train_path", sa.Text(), nullable=False),
        sa.Column("dev_path", sa.Text(), nullable=False),
        sa.Column("labels", JSON, nullable=True),
        sa.Column("metric_name", sa.String(64), nullable=False),
        sa.Column("train_rows", sa.Integer(), nullable=False),
        sa.Column("dev_rows", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_datasets_owner_id", "datasets", ["owner", "id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", JSON, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("progress", JSON, nullable=True),
        sa.Column("result", JSON, nullable=True),
        sa.Column("error", JSON, nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("enqueued_at", TIME, nullable=True),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("heartbeat_at", TIME, nullable=True),
    )
    op.create_index("ix_jobs_owner_id", "jobs", ["owner", "id"])  # the list endpoint's cursor order
    op.create_index("ix_jobs_owner_status_id", "jobs", ["owner", "status", "id"])
    op.create_index("ix_jobs_status_heartbeat", "jobs", ["status", "heartbeat_at"])  # the reaper's scan
    op.create_index("uq_jobs_owner_idempotency_key", "jobs", ["owner", "idempotency_key"], unique=True)
    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", JSON, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])
    op.create_table(
        "rounds",
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("round", sa.Integer(), primary_key=True),
        sa.Column("trainable_params", sa.BigInteger(), nullable=False),
        sa.Column("target_params", sa.BigInteger(), nullable=False),
        sa.Column("metric_name", sa.String(64), nullable=False),
        sa.Column("metric", sa.Double(), nullable=True),
        sa.Column("train_loss", sa.Double(), nullable=True),
        sa.Column("units_left", JSON, nullable=False),
        sa.Column("removed", JSON, nullable=False),
        sa.Column("backbone_params", sa.BigInteger(), nullable=True),
        sa.Column("wall_s", sa.Double(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False,
                  unique=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("rounds")
    op.drop_table("job_events")
    op.drop_table("jobs")
    op.drop_table("datasets")
    op.drop_table("api_keys")
