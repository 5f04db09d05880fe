"""Admission control: at most `limit` requests inside the application at once.

The others wait here, in the event loop, holding no thread and no database connection, in arrival order; one that
has not got in after `wait_s` is answered 503 (`overloaded`, the error envelope, Retry-After), so an overload
fails fast instead of piling up behind the database pool or the thread pool. The limit counts a request until its
response and background tasks are done. /healthz (no database) is never held back: it says the process is alive.
"""

from __future__ import annotations

import asyncio
import weakref

from .errors import overloaded

NOT_HELD_BACK = ("/healthz",)


class Admission:
    def __init__(self, app, limit: int, wait_s: float):
        self.app, self.limit, self.wait_s = app, limit, wait_s
        # One semaphore per event loop: a server process has one loop, but the tests run several on one app.
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in NOT_HELD_BACK:
            return await self.app(scope, receive, send)
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
