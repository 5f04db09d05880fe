"""Fixtures of the service tests: a migrated PostgreSQL schema of this run's own, per-test transaction rollback,
the API on that session, API keys and toy datasets (the tiny model is tests/conftest.py's `tiny_model`).
PostgreSQL and Redis run locally (.ci/run starts them); these tests fail rather than skip when they are down."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.app import create_app
from api.deps import get_sessions
from store.db import get_engine, session_factory, upgrade
from store.keys import create_key
from store.settings import Settings

from .support import TINY, empty_schema, forget_owner, upload


@pytest.fixture(scope="session")
def pg_url():
    """A schema of this test run inside the `test` database, migrated to head, dropped at the end."""
    with empty_schema("peftsearch") as url:
        upgrade(url)
        yield url


@pytest.fixture
def settings(tmp_path, pg_url, tiny_model) -> Settings:
    return Settings(home=tmp_path, database_url=pg_url, models={TINY: tiny_model}, max_upload_bytes=64 * 1024,
                    heartbeat_s=0.2, reap_after_s=1.0, progress_every_s=0.0)


@pytest.fixture
def db(settings) -> Session:
    """A session whose work is rolled back after the test, commits included (they release savepoints)."""
    with get_engine(settings.db_url).connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


@pytest.fixture
def client(settings, db) -> TestClient:
    app = create_app(settings)
    app.dependency_overrides[get_sessions] = lambda: lambda: nullcontext(db)  # routes' sessions: the test's, kept open
    with TestClient(app) as client:
        yield client


@pytest.fixture
def committed_client(settings) -> TestClient:
    """The API on committed sessions (for what a worker or a concurrent request must see), with a key."""
    owner = f"committed-{uuid.uuid4().hex[:8]}"
    with session_factory(settings.db_url).begin() as session:
        _, key = create_key(session, owner)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as client:
        yield client
    forget_owner(settings.db_url, owner)


@pytest.fixture
def make_key(db) -> Callable[[str], dict[str, str]]:
    """Authorization headers of a new key; each test's owners are its own."""
    suffix = uuid.uuid4().hex[:8]

    def make(owner: str = "alice") -> dict[str, str]:
        _, key = create_key(db, f"{owner}-{suffix}")
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
def auth(make_key) -> dict[str, str]:
    return make_key()


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The toy task in each upload format: format -> (train, dev)."""
    from tests.tiny import make_toy_task

    root = tmp_path_factory.mktemp("toy")
    return {fmt: make_toy_task(root / fmt, fmt=fmt) for fmt in ("csv", "tsv", "jsonl")}


@pytest.fixture
def dataset_id(client, auth, toy_files) -> str:
    response = upload(client, auth, *toy_files["csv"])
    assert response.status_code == 201, response.text
    return response.json()["id"]
