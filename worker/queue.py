"""Hand a committed job to whatever runs jobs: the Celery broker, or the in-process runner (woken up)."""

from __future__ import annotations

import logging
import threading

from store import jobs
from store.db import session_factory
from store.settings import Settings

log = logging.getLogger("peftsearch.queue")
job_waiting = threading.Event()  # wakes the in-process runner


def enqueue(settings: Settings, job_id: str) -> None:
    """Call only once the job's row is committed. Never raises: a job not marked enqueued_at is sent again by the
    reaper (a duplicate message finds nothing to claim)."""
    if settings.embedded:
        job_waiting.set()
        return
    from .celery_app import TASK, app_for

    try:
        app_for(settings).send_task(TASK, args=[job_id])
        with session_factory(settings.db_url).begin() as session:
            jobs.mark_enqueued(session, job_id)
    except Exception:  # the job is saved; the reaper sends it (again) later
        log.warning("job %s was not sent, or not marked sent; the reaper will send it", job_id, exc_info=True)


def broker_reachable(broker_url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        return True
    except Exception:
        return False
