"""Engines, sessions and schema migration. One engine per database URL per process."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"  # Alembic's scripts, shipped in this package
# An API process serves at most Settings.max_concurrency (default POOL_SIZE) requests at once, each holding one
# connection only while it queries; the overflow is for the reaper and the embedded worker. A request that cannot
# get a connection within POOL_TIMEOUT_S fails with a 503 instead of queueing behind a stuck database.
POOL_SIZE, MAX_OVERFLOW, POOL_TIMEOUT_S = 20, 5, 5.0


def _make_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


@functools.cache
def get_engine(url: str) -> Engine:
    _make_sqlite_folder(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=MAX_OVERFLOW,
                               pool_timeout=POOL_TIMEOUT_S)
    _engines.append(engine)
    return engine


_engines: list[Engine] = []  # every engine of this process (get_engine makes each once)


def _forget_inherited_connections() -> None:
    """In a forked child (a Celery worker's job process, forked while its reaper thread holds connections): the
    pooled connections are the parent's, and two processes on one connection corrupt it; the child opens its own."""
    for engine in _engines:
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_inherited_connections)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets the API read while the in-process worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


@functools.cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    _make_sqlite_folder(url)
    command.upgrade(alembic_config(url), revision)


@functools.cache
def migration_heads() -> frozenset[str]:
    from alembic.script import ScriptDirectory

    return frozenset(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())


def schema_is_current(session: Session) -> bool:
    """The database is at the newest migration (what /readyz checks)."""
    try:
        current = {row[0] for row in session.execute(text("SELECT version_num FROM alembic_version"))}
    except Exception:
        session.rollback()
        return False
    return current == migration_heads()
