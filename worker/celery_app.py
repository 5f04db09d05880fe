"""The Celery app, configured for long GPU jobs. `celery -A worker.celery_app worker` (or `peftsearch worker`)."""

from __future__ import annotations

import functools

from celery import Celery

from store.settings import Settings, get_settings

TASK = "peftsearch.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("peftsearch", include=["worker.tasks"])
    hard_limit = settings.job_time_limit_s
    app.conf.update(
        broker_url=settings.broker_url or "memory://",  # memory: the embedded mode never sends
        task_ignore_result=True,  # the database holds every outcome; no result backend
        task_routes={TASK: {"queue": settings.queue}},
        task_default_queue=settings.queue,
        # Ack when the job ends, not when it starts: a worker that dies mid-job gets its message redelivered
        # (and the job resumes from its last round's checkpoint).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # never reserve a second job behind a long one
        worker_concurrency=1,  # one job per GPU
        worker_max_tasks_per_child=1,  # a fresh process per job: GPU memory is returned in full
        task_time_limit=hard_limit,
        task_soft_time_limit=int(hard_limit * 0.95),  # the job fails cleanly before the hard kill
        # Redis redelivers an unacked message after this long: it must outlast the longest job.
        broker_transport_options={"visibility_timeout": hard_limit + 3600},
        broker_connection_retry_on_startup=True,
        # A request must not hang on a dead broker: the job is saved and the reaper sends it later.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    )
    return app


def producer(settings: Settings) -> Celery:
    """The app that sends to the broker these settings name (the module's `app` follows the environment only)."""
    return _producer(settings.broker_url, settings.queue, settings.job_time_limit_s)


@functools.cache
def _producer(broker_url: str | None, queue: str, job_time_limit_s: int) -> Celery:
    if (broker_url, queue, job_time_limit_s) == (app_settings.broker_url, app_settings.queue,
                                                 app_settings.job_time_limit_s):
        return app
    return make_celery(Settings(broker_url=broker_url, queue=queue, job_time_limit_s=job_time_limit_s))


app_settings = get_settings()
app = make_celery(app_settings)
