"""The FastAPI application. `create_app()` reads settings from the environment; tests pass their own."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI

from store.db import session_factory
from store.settings import Settings, get_settings

from . import dashboard, errors
from .middleware import Admission, NulGuard, UploadLimit
from .routes import ROUTERS, datasets


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="peftsearch", version=_version(), description=(
        "Search the best parameter-efficient fine-tuning configuration of a transformer for a task, by pruning. "
        "Upload a dataset, submit a job, poll it, download the pruned adapter."))
    app.state.settings = settings
    app.state.sessions = session_factory(settings.db_url)
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)
    dashboard.install(app)  # `/` and offline /docs, from files in the package
    app.add_middleware(UploadLimit, path=datasets.router.prefix, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(NulGuard)
    app.add_middleware(Admission, limit=settings.max_concurrency, wait_s=settings.admission_wait_s,
                       stream_limit=settings.max_streams)  # outermost
    return app


def _version() -> str:
    """pyproject.toml's, as installed."""
    try:
        return version("peftsearch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
