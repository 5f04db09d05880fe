"""Admission control: beyond the concurrency limit a request waits its turn, briefly, then gets a 503."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.middleware import Admission


def slow_app(release: asyncio.Event, inside: list[int]):
    async def app(scope, receive, send):
        inside.append(1)
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    return app


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.mark.parametrize("wait_s, freed_in_time", [(0.05, False), (5.0, True)])
def test_a_request_beyond_the_limit_waits_then_fails_fast_with_the_envelope(wait_s, freed_in_time):
    async def scenario():
        release, inside = asyncio.Event(), []
        transport = httpx.ASGITransport(app=Admission(slow_app(release, inside), limit=1, wait_s=wait_s))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            first = asyncio.create_task(client.get("/slow"))
            while not inside:  # the first request holds the only slot
                await asyncio.sleep(0.001)
            second = asyncio.create_task(client.get("/fast"))
            await asyncio.sleep(0.2)
            release.set()
            return await first, await second, len(inside)

    first, second, entered = run(scenario())
    assert first.status_code == 200
    if freed_in_time:
        assert second.status_code == 200 and entered == 2
    else:
        assert second.status_code == 503 and entered == 1  # never reached the application
        assert second.headers["Retry-After"] == "1"
        assert second.json()["error"]["code"] == "overloaded"


def test_healthz_is_never_held_back():
    async def scenario():
        release, inside = asyncio.Event(), []
        transport = httpx.ASGITransport(app=Admission(slow_app(release, inside), limit=1, wait_s=0.01))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            first = asyncio.create_task(client.get("/slow"))
            while not inside:
                await asyncio.sleep(0.001)
            health = await client.get("/healthz")
            release.set()
            await first
            return health

    assert run(scenario()).status_code == 200
