"""What routes receive by injection: the settings, a source of database sessions, and the caller (the owner of the
bearer key, with that source).

None of these runs in a thread or holds a connection: the owner of a key comes from an in-process cache (a query,
in a thread, on a miss), and a sync route opens its session itself, `with caller.session() as session:`, in the
one thread it runs in. So a request holds a pooled connection only while it queries, never while it waits for a
thread: a burst of requests used to take every connection and then wait for a thread that waited for a connection.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from store.keys import cached_owner, owner_cache, owner_of
from store.settings import Settings

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key made with `peftsearch keys create`.")
SessionSource = Callable[[], AbstractContextManager[Session]]


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_sessions(request: Request) -> SessionSource:
    return request.app.state.sessions


@dataclass(frozen=True)
class Caller:
    owner: str  # everything a route touches is scoped to it
    session: SessionSource  # `with caller.session() as session:` one unit of work


async def current_caller(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                         sessions: Annotated[SessionSource, Depends(get_sessions)],
                         settings: Annotated[Settings, Depends(get_settings)]) -> Caller:
    """Each key belongs to an owner."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "send an API key: 'Authorization: Bearer <key>'", headers=challenge)
    key, cache = credentials.credentials, owner_cache(settings.key_cache_s)
    owner = cached_owner(cache, key) or await run_in_threadpool(_look_up_owner, sessions, key, cache)
    if owner is None:
        raise ApiError(401, "unknown or revoked API key", headers=challenge)
    return Caller(owner, sessions)


def _look_up_owner(sessions: SessionSource, key: str, cache: TTLCache) -> str | None:
    with sessions() as session:
        return owner_of(session, key, cache)


CurrentCaller = Annotated[Caller, Depends(current_caller)]
Sessions = Annotated[SessionSource, Depends(get_sessions)]
Config = Annotated[Settings, Depends(get_settings)]
