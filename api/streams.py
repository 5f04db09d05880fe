"""A job's events as Server-Sent Events: GET /v1/jobs/{id}/events with `Accept: text/event-stream`
(https://html.spec.whatwg.org/multipage/server-sent-events.html). Without that header the route answers its JSON
pages, as it always has.

What the stream sends:
- each of the job's events, oldest first, as a `message` (the default type): `id:` the event's id, `data:` its
  EventOut JSON (the same as a JSON page's items);
- `event: progress` with the job's Progress JSON whenever it has changed since the last one sent (no `id:`, so
  resuming never depends on it): the live step, loss and estimate that events alone do not carry;
- a `: heartbeat` comment after `events_heartbeat_s` seconds without anything else, so that proxies and clients
  can tell a quiet job from a dead connection;
- `event: end` with `{"status": ...}` once the job has ended and every event before its end has been sent; then
  the stream closes.

It resumes after the `Last-Event-ID` header (what a browser's EventSource sends when it reconnects) or, without
one, after the `after` query parameter, as a JSON page would. A stream also closes without `end` after
`events_stream_max_s` seconds, when the job is deleted, or when the database stops answering: the client
reconnects with Last-Event-ID and loses nothing. A job that has ended with nothing after the cursor is answered
204 No Content, which tells an EventSource to stop reconnecting.

Between its looks (`events_poll_s` apart) a stream holds no database connection and no thread; the number open
at once is bounded apart from other requests (api/middleware.py's Admission).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

from fastapi.sse import EventSourceResponse, format_sse_event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from store import jobs
from store.models import FINAL
from store.settings import Settings

from .deps import Caller
from .schemas import EventOut, Progress

log = logging.getLogger("peftsearch.api")

MEDIA_TYPE = "text/event-stream"
PAGE = 100  # events read per look; a full page is followed by the next look at once
RETRY_MS = 2000  # what an EventSource waits before reconnecting
HEARTBEAT = format_sse_event(comment="heartbeat")
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering (nginx)


def wants_event_stream(accept: str | None) -> bool:
    """The Accept header lists text/event-stream (with a q above 0)."""
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        quality = next((p.split("=", 1)[1] for p in params if p.lower().startswith("q=")), "1")
        try:
            return float(quality) > 0
        except ValueError:
            return False
    return False


def event_stream(caller: Caller, job_id: str, after: int | None, settings: Settings) -> EventSourceResponse:
    return EventSourceResponse(_events(caller, job_id, after, settings), headers=HEADERS)


async def _events(caller: Caller, job_id: str, cursor: int | None, settings: Settings) -> AsyncIterator[bytes]:
    def look(after: int | None) -> jobs.JobLook | None:
        with caller.session() as session:
            return jobs.look(session, job_id, after=after, limit=PAGE)

    yield format_sse_event(retry=RETRY_MS)
    started = quiet_since = time.monotonic()
    progress_sent: dict | None = None
    while True:
        try:
            now = await run_in_threadpool(look, cursor)
        except (OperationalError, InterfaceError, PoolTimeout) as e:
            log.warning("event stream of job %s ends: database unavailable (%s)", job_id, type(e).__name__)
            return
        if now is None:  # deleted
            return
        for event in now.events:
            yield format_sse_event(id=str(event.id), data_str=EventOut.model_validate(event).model_dump_json())
            cursor = event.id
        sent = bool(now.events)
        if now.progress is not None and now.progress != progress_sent and now.status not in FINAL:
            yield format_sse_event(event="progress", data_str=Progress.model_validate(now.progress).model_dump_json())
            progress_sent, sent = now.progress, True
        if len(now.events) == PAGE:
            continue
        if now.status in FINAL:
            yield format_sse_event(event="end", data_str=json.dumps({"status": now.status}))
            return
        if time.monotonic() - started >= settings.events_stream_max_s:
            return
        if sent:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settings.events_heartbeat_s:
            yield HEARTBEAT
            quiet_since = time.monotonic()
        await asyncio.sleep(settings.events_poll_s)
