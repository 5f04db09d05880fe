"""The one Celery task (worker/celery_app.py registers it on each app). The message carries a job id only: the
database holds everything else."""

from __future__ import annotations

from .job import ClaimFailed
from .job import run_job as run


def run_job(task, job_id: str) -> str:
    settings = task.app.settings  # the settings its app was built from
    try:
        return run(job_id, settings)
    except ClaimFailed as e:
        # Late acks would ack the failed task and strand the job: retry it instead, with backoff (a new message;
        # this one is acked once that is sent). After the last retry the reaper's resend takes over.
        raise task.retry(exc=e, countdown=settings.claim_retry_s * 2**task.request.retries,
                         max_retries=settings.claim_retries) from e
