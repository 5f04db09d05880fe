"""Alembic migrations of the service's tables (store/models.py). `alembic upgrade head` from the repo root."""
