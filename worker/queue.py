"""Hand a committed job to whatever runs jobs: the Celery broker, or the in-process runner (woken up)."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session

from store import jobs
from store.settings import Settings

log = logging.getLogger("peftsearch.queue")
job_waiting = threading.Event()  # wakes the in-process runner


def enqueue(session: Session, settings: Settings, job_id: str) -> None:
    if settings.embedded:
        job_waiting.set()
        return
    from .celery_app import TASK, app

    try:
        app.send_task(TASK, args=[job_id])
    except Exception:  # the job is saved; the reaper sends it once the broker is back
        log.warning("the broker did not take job %s; it will be sent again", job_id, exc_info=True)
        return
    jobs.mark_enqueued(session, job_id)
    session.commit()


def broker_reachable(broker_url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(broker_url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        return True
    except Exception:
        return False
