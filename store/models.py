"""The tables. Every change here needs a migration in store/migrations/versions (a test compares the two)."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

QUEUED, VALIDATING, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "validating", "running", "cancelling", "succeeded", "failed", "cancelled")
STATUSES = (QUEUED, VALIDATING, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)
# validating: a worker took the job and is loading the model and checking the data against it (labels, tokenizer,
# prompt template); running from the first training phase on.
ACTIVE = (VALIDATING, RUNNING, CANCELLING)  # a worker holds the job
STARTED = (VALIDATING, RUNNING)  # a worker holds the job and it has not been asked to stop
FINAL = (SUCCEEDED, FAILED, CANCELLED)
# A webhook delivery's statuses: waiting for its (next) attempt, answered with a 2xx, given up on.
PENDING, DELIVERED = "pending", "delivered"
DELIVERY_STATUSES = (PENDING, DELIVERED, FAILED)

JsonDoc = JSON().with_variant(JSONB(), "postgresql")
BigId = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements only INTEGER PRIMARY KEY


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id(prefix: str) -> str:
    """'job_' + milliseconds + randomness, in hex: ids sort by creation time, so they serve as list cursors."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JsonDoc, list[Any]: JsonDoc}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner_id", "owner", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(8))  # csv, tsv, jsonl
    # The column mapping, as pruning.TaskSpec names it: text_column, text_pair_column, label_column, problem,
    # prompt_template, label_words.
    columns: Mapped[dict[str, Any]]
    train_path: Mapped[str] = mapped_column(Text)  # relative to the dataset directory
    dev_path: Mapped[str] = mapped_column(Text)
    labels: Mapped[list[Any] | None]  # class names in index order; None for regression
    metric_name: Mapped[str] = mapped_column(String(64))  # the task's primary dev metric
    train_rows: Mapped[int]
    dev_rows: Mapped[int]
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_id", "owner", "id"),
        Index("ix_jobs_owner_status_id", "owner", "status", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
        Index("uq_jobs_owner_idempotency_key", "owner", "idempotency_key", unique=True),
        Index("ix_jobs_dataset_id_status", "dataset_id", "status"),  # is a dataset in use (its deletion)
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    request: Mapped[dict[str, Any]]  # the body as submitted (model name, dataset id, budget, overrides)
    request_hash: Mapped[str] = mapped_column(String(64))  # tells an idempotent replay from a conflicting reuse
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]]  # the resolved pruning.SearchSpec the worker runs
    # Not a foreign key: a finished job keeps the id of the dataset it ran on once that dataset is deleted
    # (store.datasets.delete_dataset refuses while an unfinished job uses it).
    dataset_id: Mapped[str] = mapped_column(String(40))
    name: Mapped[str | None] = mapped_column(String(200))  # the caller's label, shown in lists
    # The caller's small JSON object (store.specs.MAX_METADATA_BYTES), returned as given. ("metadata" is taken
    # by SQLAlchemy's declarative classes, hence the attribute's name.)
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")
    progress: Mapped[dict[str, Any] | None]  # phase, round, step, loss, eta_s, ... (latest only)
    result: Mapped[dict[str, Any] | None]  # SearchResult.to_dict() without its rounds (those are rows)
    error: Mapped[dict[str, Any] | None]  # {"code", "message"}
    attempt: Mapped[int] = mapped_column(default=0)  # bumped by each claim: the fencing token of worker writes
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    enqueued_at: Mapped[datetime | None]  # set once the broker accepted the message; None: the reaper sends it
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]

    # Loaded with the job in the same query (LEFT JOINs on unique keys): every reader of a job shows them.
    artifact: Mapped[Artifact | None] = relationship(lazy="joined", viewonly=True)
    webhook: Mapped[Webhook | None] = relationship(lazy="joined", viewonly=True)  # given at submission


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # status, phase, round, error
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Round(Base):
    """One search round: a column per field of pruning.RoundRecord (store.jobs.add_round refuses a record field
    without one)."""

    __tablename__ = "rounds"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(primary_key=True)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    target_params: Mapped[int] = mapped_column(BigInteger)
    metric_name: Mapped[str] = mapped_column(String(64))
    metric: Mapped[float | None]
    train_loss: Mapped[float | None]
    units_left: Mapped[list[Any]]
    removed: Mapped[list[Any]]
    backbone_params: Mapped[int | None] = mapped_column(BigInteger)
    wall_s: Mapped[float]
    chance_metric: Mapped[float | None]
    type_values: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the artifact directory
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Webhook(Base):
    """Where an owner's job notifications go: every job of the owner (job_id None), or one job (its submission's
    webhook_url; deleted with the job)."""

    __tablename__ = "webhooks"
    __table_args__ = (Index("ix_webhooks_owner_id", "owner", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    # Signs each delivery (HMAC-SHA256); kept as given out, since signing needs it, and shown only at creation.
    secret: Mapped[str] = mapped_column(String(100))
    event_types: Mapped[list[Any]]  # of store.webhooks.EVENT_TYPES
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One notification of one webhook about one job's end, and how its sending went (worker/webhooks.py)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),  # the sender's scan
        Index("ix_webhook_deliveries_webhook_id_id", "webhook_id", "id"),
        Index("ix_webhook_deliveries_job_id_id", "job_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # the payload's id and the webhook-id header
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(default=0)  # started so far; also fences a sender's outcome
    # Pending: when the next attempt is due (while an attempt is under way, when it may be taken over). None once
    # delivered or failed.
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    # The last attempt: its answer's status and the beginning of its body (no more is kept; None: no answer),
    # and why it failed (None: it succeeded).
    response_status: Mapped[int | None]
    response_excerpt: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
