"""The one Celery task. The message carries a job id only: the database holds everything else."""

from __future__ import annotations

from store.settings import get_settings

from .celery_app import TASK, app
from .job import ClaimFailed
from .job import run_job as run


@app.task(name=TASK, bind=True)
def run_job(self, job_id: str) -> str:
    settings = get_settings()
    try:
        return run(job_id, settings)
    except ClaimFailed as e:
        # Late acks would ack the failed task and strand the job: retry it instead, with backoff (a new message;
        # this one is acked once that is sent). After the last retry the reaper's resend takes over.
        raise self.retry(exc=e, countdown=settings.claim_retry_s * 2**self.request.retries,
                         max_retries=settings.claim_retries) from e
