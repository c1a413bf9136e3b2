"""Alembic environment: the target is the SQLModel metadata (all tables of app.db.models).

The URL comes from ``sqlalchemy.url`` when set (tests), else from Lethe's settings. SQLite
needs ``render_as_batch`` (it cannot ALTER most things in place: batch mode copies tables).
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import app.db.models  # noqa: F401  (registers the tables)
from app.core.config import get_settings
from app.core.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().db_url


def run_offline() -> None:
    context.configure(url=url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url().startswith("sqlite"), dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata,
                              render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
