"""Engine and sessions. SQLite (embedded default, WAL) or PostgreSQL (production).

One engine per process (fides ``DatabaseTask`` reuses one engine per worker process).
SQLite transactions start with ``BEGIN IMMEDIATE`` so that two processes never both read
the audit chain head and then race to append (the unique ``prev_hash`` is the backstop).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

from app.core.config import get_settings


READER = "lethe_reader"


def reading(session: Session) -> Session:
    """Begin ``session``'s transaction as a reader: on SQLite a deferred ``BEGIN`` instead of
    ``BEGIN IMMEDIATE``, so a long read (a job loading every live sample) does not hold the write
    lock that the model's lease renewal and the API's writes wait for. Call before the first statement
    of the transaction, and write nothing in it. PostgreSQL: no change (readers never block writers)."""
    if not session.in_transaction():
        session.connection(execution_options={READER: True})
    return session


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            import pathlib

            pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, not left in free space (an erasure's rows; issue 18).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # noqa: ANN001
            # A reader (``reading``) begins deferred: under WAL it blocks no writer. Everything else
            # takes the write lock at once (see the module docstring).
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READER) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@functools.lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().db_url)


def create_schema(engine: Engine | None = None) -> None:
    import app.db.models  # noqa: F401  (registers the tables)

    SQLModel.metadata.create_all(engine or get_engine())


def new_session() -> Session:
    """Every session of the app comes from here (tests rebind it to a rolled-back connection)."""
    return Session(get_engine())


def get_session() -> Iterator[Session]:
    session = new_session()
    try:
        yield session
    finally:
        try:
            session.close()
        except DBAPIError as exc:
            # The connection died after the handler answered (a DB restart, a killed backend):
            # the ROLLBACK on close has nothing left to undo. Raising here would turn a sent 200
            # into an "unhandled error" and make uvicorn drop the client's connection.
            if not exc.connection_invalidated:
                raise


@contextlib.contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session for workers and background threads; the caller commits."""
    with (Session(engine) if engine is not None else new_session()) as session:
        yield session
