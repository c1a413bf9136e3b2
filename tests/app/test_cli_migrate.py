"""`lethe migrate` (the compose ``migrate`` service, the Kubernetes migrations Job): a fresh database
is built at head and a second run changes nothing; a database that ``create_all`` made is stamped,
not failed on, and one made by an older schema is refused. `lethe bootstrap` in production keeps
the admin key out of its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlmodel import SQLModel

import app.db.models  # noqa: F401  (registers the tables)
from app.core.db import create_schema, make_engine
from tests.conftest import fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]
HEAD = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini"))).get_current_head()


def lethe(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """The real console entry point, in a process of its own (settings come from the environment)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def schema_of(url: str) -> tuple[str | None, set[str], list[str]]:
    """(alembic revision, table names, the DDL SQLite keeps) of the database at ``url``."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
            tables = set(inspect(conn).get_table_names())
            ddl = [r[0] for r in conn.execute(text("SELECT sql FROM sqlite_master ORDER BY name"))] \
                if conn.dialect.name == "sqlite" else []
    finally:
        engine.dispose()
    return revision, tables, ddl


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lethe.db'}"
    else:
        with fresh_pg_database("lethe_cli_mig") as url:
            yield url


def test_fresh_sqlite_is_built_at_head_and_a_second_run_is_a_no_op(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = lethe("migrate", LETHE_DATABASE_URL=url)
    assert first.returncode == 0, first.stderr
    assert "upgraded to head" in first.stdout
    revision, tables, ddl = schema_of(url)
    assert revision == HEAD
    assert tables == set(SQLModel.metadata.tables) | {"alembic_version"}

    second = lethe("migrate", LETHE_DATABASE_URL=url)
    assert second.returncode == 0, second.stderr
    assert schema_of(url) == (HEAD, tables, ddl)


def test_check_changes_nothing_and_says_whether_the_schema_is_at_head(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'check.db'}"
    before = lethe("migrate", "--check", LETHE_DATABASE_URL=url)
    assert before.returncode == 1 and "no revision" in before.stderr
    assert schema_of(url)[:2] == (None, set())
    assert lethe("migrate", LETHE_DATABASE_URL=url).returncode == 0
    after = lethe("migrate", "--check", LETHE_DATABASE_URL=url)
    assert after.returncode == 0 and HEAD in after.stdout, after.stderr


def test_an_unreachable_database_fails_without_showing_the_password() -> None:
    url = "postgresql+psycopg://lethe:hunter2-secret@127.0.0.1:1/lethe"
    r = lethe("migrate", LETHE_DATABASE_URL=url)
    assert r.returncode == 1 and "not reachable" in r.stderr
    assert "hunter2" not in r.stdout + r.stderr


def test_the_default_url_is_the_settings_db_url(tmp_path: Path) -> None:
    r = lethe("migrate", LETHE_DATA_DIR=str(tmp_path))  # no LETHE_DATABASE_URL: <data_dir>/lethe.db
    assert r.returncode == 0, r.stderr
    assert schema_of(f"sqlite:///{tmp_path / 'lethe.db'}")[0] == HEAD


def test_a_create_all_database_is_stamped_not_failed(empty_db: str) -> None:
    engine = make_engine(empty_db)
    create_schema(engine)  # what `lethe run`, `lethe bootstrap` and the API's startup do
    engine.dispose()
    assert schema_of(empty_db)[0] is None

    r = lethe("migrate", LETHE_DATABASE_URL=empty_db)
    assert r.returncode == 0, r.stderr
    assert "stamped head" in r.stdout
    revision, tables, _ = schema_of(empty_db)
    assert revision == HEAD and tables == set(SQLModel.metadata.tables) | {"alembic_version"}
    again = lethe("migrate", LETHE_DATABASE_URL=empty_db)
    assert again.returncode == 0 and "upgraded to head" in again.stdout, again.stderr


def test_an_unversioned_schema_that_is_not_head_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    create_schema(engine)
    with engine.begin() as conn:  # as if made by a Lethe from before the table existed
        conn.execute(text("DROP TABLE fidesresume"))
    engine.dispose()

    r = lethe("migrate", LETHE_DATABASE_URL=url)
    assert r.returncode == 1
    assert "older Lethe" in r.stderr and "alembic stamp" in r.stderr
    assert schema_of(url)[0] is None  # neither stamped nor half-upgraded


def test_production_bootstrap_keeps_the_admin_key_out_of_the_logs(tmp_path: Path) -> None:
    r = lethe("bootstrap", LETHE_ENV="production", LETHE_DATA_DIR=str(tmp_path), LETHE_SUBJECT_KEY_SECRET="s",
              LETHE_CALLBACK_HMAC_SECRET="c")  # LETHE_MODELS unset: production registers no model
    assert r.returncode == 0, r.stderr
    key_file = tmp_path / "admin.key"
    key = key_file.read_text().strip()
    assert key and key not in r.stdout + r.stderr
    assert str(key_file) in r.stdout
    assert key_file.stat().st_mode & 0o777 == 0o600
    engine = make_engine(f"sqlite:///{tmp_path / 'lethe.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM model")).scalar() == 0
    finally:
        engine.dispose()
