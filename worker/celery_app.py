"""The Celery app, configured for long GPU jobs. `celery -A worker.celery_app worker` (or `peftsearch worker`).

An app is built from the Settings it is given, and its task runs jobs with those same settings: the module's `app`
(what `celery -A` loads) from the environment, `app_for(settings)` for a caller holding settings of its own.
"""

from __future__ import annotations

from celery import Celery

from store.settings import Settings, get_settings

TASK = "peftsearch.run_job"


def make_celery(settings: Settings) -> Celery:
    from .reaper import WorkerReaperStep
    from .tasks import run_job

    app = Celery("peftsearch")
    app.settings = settings  # what its task runs jobs with
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
    app.task(name=TASK, bind=True)(run_job)
    app.steps["worker"].add(WorkerReaperStep)  # a worker started from this app reaps too (worker_reaper)
    return app


def app_for(settings: Settings) -> Celery:
    """The app these settings build, one per distinct settings in a process (the API sends with it, the
    embedded runner calls its task). Keyed by the settings' JSON: Settings is not hashable."""
    key = settings.model_dump_json()
    if key not in _apps:
        _apps[key] = make_celery(settings)
    return _apps[key]


_apps: dict[str, Celery] = {}
app = make_celery(get_settings())
