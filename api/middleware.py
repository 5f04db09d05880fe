"""What gets into the application, as plain ASGI wrappers (no cost on routes they do not concern): no NUL
character in a request's path, query or headers (`NulGuard`), at most `limit` requests inside it at once
(`Admission`), and no upload over the size limit (`UploadLimit`).

PostgreSQL text cannot hold NUL, so a NUL reaching a query failed there as a 500; it is a 422 at the door instead
(JSON bodies and form fields are checked where they are read: store/specs.py, api/routes/datasets.py).

Admission control: at most `limit` requests inside the application at once.

The others wait here, in the event loop, holding no thread and no database connection, in arrival order; one that
has not got in after `wait_s` is answered 503 (`overloaded`, the error envelope, Retry-After), so an overload
fails fast instead of piling up behind the database pool or the thread pool. The limit counts a request until its
response and background tasks are done. /healthz (no database) is never held back: it says the process is alive.
An event stream is counted apart (see Admission).
"""

from __future__ import annotations

import asyncio
import weakref
from urllib.parse import parse_qsl

from .errors import error_response, overloaded
from .streams import wants_event_stream

NOT_HELD_BACK = ("/healthz",)
MULTIPART_OVERHEAD = 64 * 1024  # form fields and part headers around the two files


class Admission:
    """An event stream (api/streams.py) lasts as long as its job, holding nothing between its looks: it takes one
    of `stream_limit` places of its own instead of a slot, and finding them all taken is a 503 at once."""

    def __init__(self, app, limit: int, wait_s: float, stream_limit: int = 100):
        self.app, self.limit, self.wait_s, self.stream_limit = app, limit, wait_s, stream_limit
        # One semaphore per event loop: a server process has one loop, but the tests run several on one app.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())
        self._streams: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in NOT_HELD_BACK:
            return await self.app(scope, receive, send)
        if is_stream_request(scope):
            places = self._streams_of(asyncio.get_running_loop())
            if places.locked():
                return await overloaded()(scope, receive, send)
            await places.acquire()  # free: returns at once
            try:
                return await self.app(scope, receive, send)
            finally:
                places.release()
        slots = self._slots_of(asyncio.get_running_loop())
        if slots.locked():  # full: wait for a turn, but not for ever
            try:
                await asyncio.wait_for(slots.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                return await overloaded()(scope, receive, send)
        else:
            await slots.acquire()  # free: returns at once
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()

    def _slots_of(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.limit)
        return slots

    def _streams_of(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        places = self._streams.get(loop)
        if places is None:
            places = self._streams[loop] = asyncio.Semaphore(self.stream_limit)
        return places


def is_stream_request(scope) -> bool:
    """A GET of a job's events asking for text/event-stream: what the events route answers with a stream."""
    if scope["method"] != "GET" or not scope["path"].endswith("/events"):
        return False
    accept = b", ".join(value for name, value in scope["headers"] if name == b"accept")
    return wants_event_stream(accept.decode("latin-1"))


class NulGuard:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (param := _nul_in(scope)) is not None:
            response = error_response(422, "invalid_request", "NUL characters are not allowed", param or None)
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def _nul_in(scope) -> str | None:
    """Where a NUL is: '' for the path, a query parameter's or a header's name; None when there is none."""
    if "\x00" in scope["path"]:
        return ""
    for name, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or ""
    for name, value in scope["headers"]:
        if b"\x00" in name or b"\x00" in value:
            return name.decode("latin-1").replace("\x00", "")
    return None


class UploadLimit:
    """Refuse an upload over the limit before more than the limit is read, whatever its framing: at once when
    Content-Length says so, otherwise as soon as the streamed (chunked) body passes it. FastAPI reads and spools
    the whole form before any dependency runs, so the bytes are counted here, beneath it."""

    def __init__(self, app, path: str, max_upload_bytes: int):
        self.app, self.path, self.max_body = app, path, 2 * max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope, receive, send):
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == self.path):
            return await self.app(scope, receive, send)
        refusal = error_response(413, "payload_too_large", f"upload larger than {self.max_body} bytes")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            return await refusal(scope, receive, send)
        received, refused, started = 0, False, False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    refused = True
                    if not started:
                        await refusal(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading; nothing more is spooled
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # the 413 is the answer: drop whatever the app makes of the cut-off body
            started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not refused:
                raise
