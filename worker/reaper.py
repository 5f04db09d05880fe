"""Re-queue jobs whose worker died (no heartbeat), and send queued jobs the broker never took, or that no worker
claimed in time (store.jobs.reap)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

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
    for job_id in to_send:
        enqueue(settings, job_id)
    return to_send


def reap_forever(settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.reap_every_s):
        try:
            reap_once(settings)
        except Exception:  # a database hiccup must not end the loop
            log.exception("reaper pass failed")
