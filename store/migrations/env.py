"""Alembic environment: the URL comes from the Alembic config when set (store.db.upgrade sets it), else from
the service settings (DATABASE_URL), so `alembic upgrade head` and the embedded start-up migrate alike."""

from alembic import context
from sqlalchemy import create_engine, pool

from store.models import Base
from store.settings import get_settings

url = context.config.get_main_option("sqlalchemy.url") or get_settings().db_url
connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
