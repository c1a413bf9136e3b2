"""Alembic: ``upgrade head`` builds, from an empty database, exactly the schema the models declare,
on SQLite (batch mode) and on a fresh PostgreSQL database; ``downgrade base`` empties it again."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlmodel import SQLModel

import app.db.models  # noqa: F401
from app.core.db import make_engine
from tests.conftest import fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def check_round_trip(url: str) -> None:
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == set(SQLModel.metadata.tables) | {"alembic_version"}
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}),
                                    SQLModel.metadata)
            assert diff == [], f"models changed without a migration: {diff}"
        command.downgrade(cfg, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        command.upgrade(cfg, "head")  # and back up again
    finally:
        engine.dispose()


def test_upgrade_head_on_fresh_sqlite(tmp_path: Path) -> None:
    check_round_trip(f"sqlite:///{tmp_path / 'migrated.db'}")


def test_upgrade_head_on_fresh_postgresql() -> None:
    with fresh_pg_database("lethe_mig") as url:
        check_round_trip(url)
