"""Deployment facts: the base models on offer, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from pruning.sizes import architecture
from store.db import schema_is_current
from store.specs import model_config

from ..deps import Config, CurrentCaller, Sessions
from ..errors import ApiError, documented
from ..schemas import Health, ModelOut, Page, Readiness

router = APIRouter()


@router.get("/v1/models", response_model=Page[ModelOut], tags=["models"], responses=documented(401, 422, 503),
            summary="Base models you can search on")
def list_models(_: CurrentCaller, settings: Config) -> Page[ModelOut]:
    return Page[ModelOut](data=[describe_model(name, path) for name, path in sorted(settings.model_paths.items())])


def describe_model(name: str, path: str) -> ModelOut:
    config = model_config(path)
    arch = architecture(config)
    return ModelOut(name=name, model_type=config.get("model_type"), kind=arch and arch.kind,
                    problems=list(arch.problems) if arch else [], layers=config.get("num_hidden_layers"),
                    hidden_size=config.get("hidden_size"))


@router.get("/healthz", response_model=Health, tags=["health"], summary="The process is up")
def healthz() -> Health:
    return Health()


@router.get("/readyz", response_model=Readiness, tags=["health"], responses=documented(503),
            summary="The database is reachable and migrated, and the broker answers")
def readyz(sessions: Sessions, settings: Config) -> Readiness:
    with sessions() as session:
        try:
            session.execute(text("SELECT 1"))
        except Exception as e:
            raise ApiError(503, f"database unreachable: {type(e).__name__}") from e
        if not schema_is_current(session):
            raise ApiError(503, "database schema is not at the newest migration: run `alembic upgrade head`")
    if settings.embedded:
        return Readiness(database="ok", broker="embedded")
    from worker.queue import broker_reachable

    if not broker_reachable(settings.broker_url):
        raise ApiError(503, "broker unreachable")
    return Readiness(database="ok", broker="ok")
