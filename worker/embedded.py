"""The in-process worker of the embedded mode: runs queued jobs one at a time with the Celery task itself."""

from __future__ import annotations

import logging
import threading

from store import jobs
from store.db import session_factory
from store.settings import Settings

from .queue import job_waiting

log = logging.getLogger("peftsearch.embedded")


def run_forever(settings: Settings, stop: threading.Event) -> None:
    from .celery_app import TASK, app_for

    run_job = app_for(settings).tasks[TASK]  # calling a Celery task object runs it here, in this thread

    sessions = session_factory(settings.db_url)
    while not stop.is_set():
        try:
            with sessions() as session:
                job_id = jobs.next_queued(session)
            if job_id is not None:
                run_job(job_id)
                continue
        except Exception:
            log.exception("in-process worker pass failed")
        job_waiting.wait(settings.poll_s)
        job_waiting.clear()
