"""`lethe migrate`: bring the database to the newest schema (``alembic upgrade head``).

The URL is the settings' ``db_url`` (``LETHE_DATABASE_URL``, default the embedded SQLite file);
the scripts are ``alembic.ini`` / ``migrations/`` of the source tree (the image installs Lethe
editable, so that tree is the package's parent directory).

A database that ``SQLModel.metadata.create_all`` built (``lethe run``, ``lethe bootstrap`` and
the API's startup all call it) has Lethe's tables but no ``alembic_version``: upgrading it would
fail on the first ``CREATE TABLE``. ``create_all`` builds exactly the schema of the models of the
code that ran it, and tests/app/test_migrations.py holds those models equal to ``head``; so when
the tables in the database match this code's models, the database *is* at head and is stamped
``head`` instead. When they differ (it was made by an older Lethe), stamping would be a lie and
upgrading would fail: ``migrate`` refuses and says how to stamp the right revision by hand.

``lethe migrate --check`` changes nothing: exit 0 when the database is at head, 1 otherwise. The
Kubernetes Deployments wait on it in an init container, so that only the migrations Job migrates
(two pods racing to run DDL would collide) and no new code serves an old schema.
"""


from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def alembic_ini() -> Path:
    for root in (SOURCE_ROOT, Path.cwd()):
        if (root / "alembic.ini").is_file() and (root / "migrations").is_dir():
            return root / "alembic.ini"
    raise FileNotFoundError(f"alembic.ini and migrations/ not found in {SOURCE_ROOT} or {Path.cwd()}")


def alembic_config(url: str):  # noqa: ANN201 - alembic is imported lazily (the CLI loads fast)
    from alembic.config import Config

    cfg = Config(str(alembic_ini()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolates '%'
    return cfg


def at_head(url: str) -> tuple[bool, str | None, str | None]:
    """(current == head, current revision, head revision) of the database at ``url``."""
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from app.core.db import make_engine

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current == head, current, head


def migrate(url: str) -> str:
    """Upgrade (or stamp) the database at ``url`` to head; returns what was done."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect
    from sqlmodel import SQLModel

    import app.db.models  # noqa: F401  (registers the tables)
    from app.core.db import make_engine

    cfg = alembic_config(url)
    ours = set(SQLModel.metadata.tables)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            unversioned = current is None and bool(ours & set(inspect(conn).get_table_names()))
            diff = []
            if unversioned:  # other tables (a broker's, say) are not Lethe's business
                only_ours = lambda name, kind, _parent: kind != "table" or name in ours  # noqa: E731
                context = MigrationContext.configure(conn, opts={"compare_type": False, "include_name": only_ours})
                diff = compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    if not unversioned:
        command.upgrade(cfg, "head")
        return "upgraded to head"
    if diff:
        raise RuntimeError(
            "the database has Lethe tables but no alembic_version, and they differ from this version's schema "
            f"({len(diff)} differences, first: {diff[0]}); it was made by an older Lethe. Find the revision that "
            "matches it in migrations/versions, run `alembic stamp <revision>`, then `lethe migrate` again.")
    command.stamp(cfg, "head")
    return "stamped head (schema made by create_all, already current)"


def migrate_command(check: Annotated[bool, typer.Option(
        "--check", help="change nothing; exit 0 if the schema is at head, else 1")] = False) -> int:
    from sqlalchemy.exc import OperationalError

    from app.core.config import get_settings

    url = get_settings().db_url
    try:
        if check:
            ok, current, head = at_head(url)
            print(f"lethe migrate: database at {current or 'no revision'}, head is {head}",
                  file=sys.stdout if ok else sys.stderr)
            return 0 if ok else 1
        done = migrate(url)
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"lethe migrate: {exc}", file=sys.stderr)
        return 1
    except OperationalError as exc:  # the message alone: the URL carries the password
        print(f"lethe migrate: database not reachable ({type(exc.orig).__name__}: {exc.orig})", file=sys.stderr)
        return 1
    print(f"lethe migrate: {done}")
    return 0
