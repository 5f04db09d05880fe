"""Re-queue jobs whose worker died (no heartbeat), and send queued jobs the broker never took, or that no worker
claimed in time (store.jobs.reap); delete the archives of jobs that ended before the retention period (settings'
artifact_retention_days; store.jobs.expire_artifacts). The loop runs in every `peftsearch serve` and, unless
`worker_reaper` is off, in the main process of every Celery worker (WorkerReaperStep), so a deployment whose
workers run where no API does still reaps; store.jobs.reaper_turn lets one process pass at a time."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from celery import bootsteps

from store import jobs
from store.db import session_factory
from store.models import utcnow
from store.settings import Settings

from .queue import enqueue

log = logging.getLogger("peftsearch.reaper")


def reap_once(settings: Settings) -> list[str]:
    sessions = session_factory(settings.db_url)
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.reap_after_s)
    with sessions.begin() as session:
        if not jobs.reaper_turn(session):  # another process is reaping this very moment
            return []
        to_send = jobs.reap(session, stale_before=cutoff, max_attempts=settings.max_attempts, unsent_before=cutoff,
                            resend_after_s=settings.resend_after_s, resend_max_s=settings.resend_max_s)
        days = settings.artifact_retention_days
        expired = [] if days is None else jobs.expire_artifacts(session, ended_before=now - timedelta(days=days))
    for path in expired:  # their rows are gone: nothing serves them any more
        (settings.artifacts / path).unlink(missing_ok=True)
    for job_id in to_send:
        enqueue(settings, job_id)
    return to_send


def reap_forever(settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.reap_every_s):
        try:
            reap_once(settings)
        except Exception:  # a database hiccup must not end the loop
            log.exception("reaper pass failed")


class ReaperLoop:
    """reap_forever in a thread of this process, from start() to stop()."""

    def __init__(self, settings: Settings):
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=reap_forever, args=(settings, self.stopped), name="reaper",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(STOP_WAIT_S)


STOP_WAIT_S = 10.0  # a worker shutting down lets a pass in progress commit and send, but not hang on it


class WorkerReaperStep(bootsteps.StartStopStep):
    """The reaper loop in a Celery worker's main process, when its settings' `worker_reaper` is on. A bootstep of
    the worker, not of its pool's processes: the prefork children that run jobs never reap. It starts once the
    pool has forked its first children; children forked later open their own database connections
    (store/db.py)."""

    requires = ("celery.worker.components:Pool",)

    def include_if(self, worker) -> bool:
        return worker.app.settings.worker_reaper

    def create(self, worker) -> ReaperLoop:
        return ReaperLoop(worker.app.settings)
