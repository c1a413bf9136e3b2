"""Shared fixtures: real databases (SQLite and PostgreSQL), rolled back per test.

Every session of the app comes from ``app.core.db.new_session``; tests rebind it to one
connection inside a transaction that is rolled back afterwards (Polar / Dispatch style),
so services that commit only release a savepoint.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

_TMP = Path(tempfile.mkdtemp(prefix="lethe-tests-"))
os.environ.update({
    "LETHE_ENV": "test",
    "LETHE_DATA_DIR": str(_TMP),
    "LETHE_SUBJECT_KEY_SECRET": "test-secret",
    "LETHE_DEMO_MODELS": "toy",
    "LETHE_BATCH_WINDOW_S": "0",
    "LETHE_JOB_SEED": "0",
    "LETHE_BROKER_URL": "memory://",
})

import pytest  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from sqlmodel import Session  # noqa: E402

from app.core import db  # noqa: E402
from app.core.config import get_settings  # noqa: E402
from app.core.db import create_schema, make_engine  # noqa: E402
from app.core.security import SCOPES  # noqa: E402
from app.services.requests.subscribers import install_subscribers  # noqa: E402

PG_URL = os.environ.get("LETHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Services called directly transition requests as the API and the worker do: with the subscribers.
install_subscribers()
# The Redis server the tests use (a loopback one; another port lets parallel checkouts run apart).
REDIS = os.environ.get("LETHE_TEST_REDIS", "redis://127.0.0.1:6379")


def pg_available() -> bool:
    import psycopg

    try:
        psycopg.connect(PG_URL.replace("+psycopg", ""), connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001
        return False


def redis_available() -> bool:
    from app.core.queue import redis_reachable

    return redis_reachable(f"{REDIS}/0")


_engines: dict[str, object] = {}


def create_pg_database(prefix: str) -> tuple[str, Callable[[], None]]:
    """A new, empty PostgreSQL database: (SQLAlchemy URL, drop function)."""
    import psycopg

    if not pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL must be reachable in CI")
        pytest.skip("PostgreSQL not reachable")
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = PG_URL.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return PG_URL.rsplit("/", 1)[0] + f"/{name}", drop


@contextlib.contextmanager
def fresh_pg_database(prefix: str = "lethe_tmp") -> Iterator[str]:
    url, drop = create_pg_database(prefix)
    try:
        yield url
    finally:
        drop()


def _private_pg_database() -> str:
    """A database of this test run only (dropped at exit), so parallel runs never collide."""
    import atexit

    url, drop = create_pg_database("lethe_test")

    def dispose_and_drop() -> None:
        for engine in _engines.values():
            engine.dispose()
        drop()

    atexit.register(dispose_and_drop)
    return url


def engine_for(backend: str):  # noqa: ANN201
    if backend not in _engines:
        if backend == "postgresql":
            url = _private_pg_database()
        else:
            url = f"sqlite:///{_TMP / 'unit.db'}"
        engine = make_engine(url)
        create_schema(engine)
        _engines[backend] = engine
    return _engines[backend]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def session(backend: str, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    engine = engine_for(backend)
    conn = engine.connect()
    trans = conn.begin()
    monkeypatch.setattr(db, "new_session", lambda: Session(bind=conn, join_transaction_mode="create_savepoint"))
    s = db.new_session()
    try:
        yield s
    finally:
        s.close()
        trans.rollback()
        conn.close()


@pytest.fixture
def settings():  # noqa: ANN201
    return get_settings()


@pytest.fixture
def app(session):  # noqa: ANN001, ANN201
    from app.main import create_app

    return create_app(serve_models=False)


@pytest.fixture
def client(app) -> TestClient:  # noqa: ANN001
    return TestClient(app, raise_server_exceptions=False)


def make_key(session: Session, scopes: list[str], name: str = "test") -> str:
    from app.services.access import keys

    _, clear = keys.create_key(session, name=name, scopes=scopes)
    session.commit()
    return clear


@pytest.fixture
def admin_headers(session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(session, list(SCOPES), 'admin')}"}


@pytest.fixture
def toy_model(session: Session, settings):  # noqa: ANN001, ANN201
    """The toy model registered (samples in the registry, v1 trained and serving)."""
    from app.services.models import registration

    version = registration.register_demo_model(session, name="toy", secret=settings.subject_key_secret,
                                               artifacts_dir=settings.artifacts_dir, device="cpu")
    session.commit()
    return version


# ---------------------------------------------------------------- tiny CPU model (ML tests)


def pytest_configure(config: pytest.Config) -> None:
    from app.ml.device import set_cpu_threads

    set_cpu_threads(1)  # tiny models on shared cores: see set_cpu_threads


@pytest.fixture(scope="session")
def toy():  # noqa: ANN201
    from app.ml.specs import get_spec

    return get_spec("toy")


@pytest.fixture(scope="session")
def toy_examples(toy):  # noqa: ANN001, ANN201
    return toy.load_examples()


@pytest.fixture(scope="session")
def toy_trained(toy, toy_examples):  # noqa: ANN001, ANN201
    """(model, meta) trained on the toy train split; tests must not mutate it."""
    from app.ml.train import train_from_scratch

    return train_from_scratch(toy, toy_examples, device="cpu", seed=0)
