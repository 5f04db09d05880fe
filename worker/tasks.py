"""The one Celery task. The message carries a job id only: the database holds everything else."""

from __future__ import annotations

from store.settings import get_settings

from .celery_app import TASK, app
from .job import run_job as run


@app.task(name=TASK)
def run_job(job_id: str) -> str:
    return run(job_id, get_settings())
