"""The Alembic migrations build exactly the tables of store/models.py, on PostgreSQL and SQLite, and go down
and up again cleanly on a throwaway PostgreSQL database."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text

from store.db import alembic_config, get_engine, upgrade
from store.models import Base

from .support import PG_URL, ROOT

TABLES = {"alembic_version", "api_keys", "datasets", "jobs", "job_events", "rounds", "artifacts", "webhooks",
          "webhook_deliveries"}


def differences(url: str, metadata: MetaData) -> list:
    with create_engine(url).connect() as connection:
        return compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}), metadata)


@pytest.fixture
def throwaway_pg():
    name = f"peftsearch_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.service
def test_models_and_migrations_agree_on_postgres(pg_url):
    assert differences(pg_url, Base.metadata) == []


def test_models_and_migrations_agree_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url)
    assert differences(url, Base.metadata) == []


def test_the_comparison_sees_a_column_without_a_migration(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url)
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    metadata.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    assert [d[0] for d in differences(url, metadata)] == ["add_column"]


@pytest.mark.service
def test_upgrade_downgrade_upgrade_on_postgres(throwaway_pg):
    upgrade(throwaway_pg)
    assert set(inspect(create_engine(throwaway_pg)).get_table_names()) == TABLES
    command.downgrade(alembic_config(throwaway_pg), "base")
    assert set(inspect(create_engine(throwaway_pg)).get_table_names()) == {"alembic_version"}
    upgrade(throwaway_pg)
    assert differences(throwaway_pg, Base.metadata) == []


@pytest.mark.service
def test_alembic_cli_reads_database_url(throwaway_pg):
    """What the compose `migrate` service runs: `alembic upgrade head` with DATABASE_URL set."""
    run = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], cwd=ROOT, capture_output=True,
                         text=True, env={"DATABASE_URL": throwaway_pg, "PATH": ""}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert differences(throwaway_pg, Base.metadata) == []
