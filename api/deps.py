"""What routes receive by injection: the settings, a database session, and the caller's identity."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from store.keys import owner_of
from store.settings import Settings

from .errors import ApiError

bearer = HTTPBearer(auto_error=False, description="An API key made with `peftsearch keys create`.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def current_owner(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
                  session: Annotated[Session, Depends(get_session)]) -> str:
    """Each key belongs to an owner; everything a route touches is scoped to that owner."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise ApiError(401, "send an API key: 'Authorization: Bearer <key>'", headers=challenge)
    owner = owner_of(session, credentials.credentials)
    if owner is None:
        raise ApiError(401, "unknown or revoked API key", headers=challenge)
    return owner


Owner = Annotated[str, Depends(current_owner)]
Db = Annotated[Session, Depends(get_session)]
Config = Annotated[Settings, Depends(get_settings)]
