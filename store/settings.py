"""Settings from the environment. With nothing set: SQLite under ./var and an in-process worker.

DATABASE_URL and BROKER_URL keep their conventional names; everything else is PEFTSEARCH_<FIELD>.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pruning.bundled import installed_models


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEFTSEARCH_", extra="ignore", populate_by_name=True)

    home: Path = Path("var")  # embedded database, uploads, artifacts and work files live under it by default
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL"))
    broker_url: str | None = Field(None, validation_alias=AliasChoices("BROKER_URL"))  # None: in-process worker
    artifact_dir: Path | None = None  # pruned-adapter archives (shared by api and worker)
    dataset_dir: Path | None = None  # uploaded datasets (shared by api and worker)
    work_dir: Path | None = None  # per-job checkpoints and engine output (worker only)
    # Base models this deployment can use: name -> local path. JSON in the environment; empty means bundled ones.
    models: dict[str, str] = Field(default_factory=dict)
    queue: str = "gpu"

    max_upload_bytes: int = 50 * 2**20  # per dataset file
    # What one job may ask of a worker (a 422 names the limit): rounds, training steps of any phase, batch size,
    # and LoRA rank / adapter width / prefix length (also capped by the model's hidden size and positions).
    max_rounds: int = 64
    max_steps: int = 100_000
    max_batch_size: int = 1024
    max_module_size: int = 1024
    job_time_limit_s: int = 24 * 3600  # hard limit of one attempt; the soft limit is 95% of it
    max_attempts: int = 3  # a job whose worker died this many times fails
    heartbeat_s: float = 10.0  # the worker touches the job this often, and re-reads its cancellation flag
    reap_after_s: float = 120.0  # a running job without a heartbeat for this long is re-queued
    reap_every_s: float = 30.0
    worker_reaper: bool = True  # Celery workers run the reaper loop too (their main process), not only the API
    # A queued job no worker has claimed this long after it was sent is sent again (a message lost by the broker,
    # or acked by a worker that could not reach the database); the wait doubles with the job's age, up to
    # resend_max_s, so a long backlog does not flood the queue with duplicates.
    resend_after_s: float = 300.0
    resend_max_s: float = 3600.0
    # A task that cannot reach the database before its claim commits is retried with backoff (first wait
    # claim_retry_s, doubling, at most claim_retries times); after that the resend above takes over.
    claim_retry_s: float = 2.0
    claim_retries: int = 8
    progress_every_s: float = 1.0  # at most one progress write per this many seconds for training steps
    # The retrain is checkpointed once this many seconds (or, when set, steps) have passed since its last
    # checkpoint: a worker that dies while retraining loses at most that much. It changes no result.
    retrain_checkpoint_s: float | None = Field(120.0, gt=0)
    retrain_checkpoint_steps: int | None = Field(None, ge=1)
    poll_s: float = 1.0  # the in-process worker's wait between looks for queued jobs
    # The archives of jobs that ended longer ago than this are deleted by the reaper (the job, its result, rounds
    # and events stay; a download says the archive is gone and why). None: kept until the job is deleted.
    artifact_retention_days: float | None = Field(None, gt=0)

    # API under load (per API process): requests served at once (at most the database pool, store/db.py
    # POOL_SIZE); how long a request beyond them waits for its turn before a 503; how long a key's owner is
    # cached (a key revoked by another process still works here for this long).
    max_concurrency: int = 20
    admission_wait_s: float = 2.0
    key_cache_s: float = 5.0
    # Event streams (GET /v1/jobs/{id}/events as text/event-stream), per API process: how many may be open (each
    # holds no connection or thread between looks, so they are counted apart from max_concurrency); how often
    # each looks for new events; the seconds between heartbeat comments when nothing happens; how long one
    # stream lasts before the server ends it and the client resumes with Last-Event-ID (which also bounds how long
    # a server's shutdown waits for open streams).
    max_streams: int = 100
    events_poll_s: float = 1.0
    events_heartbeat_s: float = 15.0
    events_stream_max_s: float = 60.0
    # Webhooks (store/webhooks.py, worker/webhooks.py): every `peftsearch serve` looks for due deliveries every
    # webhook_poll_s; a receiver gets webhook_timeout_s for its whole answer; a failed attempt (timeout,
    # connection error, non-2xx answer) is tried again after each wait of webhook_retry_s in turn, and the
    # delivery is failed once they are spent (at most 1 + len(webhook_retry_s) attempts). JSON in the environment,
    # e.g. PEFTSEARCH_WEBHOOK_RETRY_S='[10, 60]'. An owner has at most max_webhooks webhooks for all its jobs.
    webhook_poll_s: float = Field(1.0, gt=0)
    webhook_timeout_s: float = Field(10.0, gt=0)
    webhook_retry_s: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: [10.0, 60.0, 300.0, 1800.0, 7200.0])
    max_webhooks: int = 20

    @property
    def embedded(self) -> bool:
        """No broker configured: jobs run in the serving process and its database is migrated on start."""
        return not self.broker_url

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'peftsearch.sqlite3').resolve()}"

    @property
    def artifacts(self) -> Path:
        return (self.artifact_dir or self.home / "artifacts").resolve()

    @property
    def datasets(self) -> Path:
        return (self.dataset_dir or self.home / "datasets").resolve()

    @property
    def work(self) -> Path:
        return (self.work_dir or self.home / "work").resolve()

    @property
    def model_paths(self) -> dict[str, str]:
        return self.models or installed_models()


@functools.cache
def get_settings() -> Settings:
    return Settings()
