"""Fixtures for the unlearning and verification tests (toy spec and model: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

FORGET_SUBJECTS = ["toy-02", "toy-03", "toy-04", "toy-07"]  # 4 train subjects, 40 memorised samples


@pytest.fixture(scope="session")
def toy_sets(toy_examples):
    """train/forget/retain/test/holdout lists for unlearning the 4 subjects above."""
    train = [e for e in toy_examples if e.split == "train"]
    assert {e.subject_id for e in train} >= set(FORGET_SUBJECTS)
    return {
        "forget": [e for e in train if e.subject_id in FORGET_SUBJECTS],
        "retain": [e for e in train if e.subject_id not in FORGET_SUBJECTS],
        "test": [e for e in toy_examples if e.split == "test"],
        "holdout": [e for e in toy_examples if e.split == "holdout"],
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def own_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:  # noqa: ANN201
    """A real engine with a pool of its own (a database file, or a fresh PostgreSQL database), for
    tests whose worker runs threads that each need a connection (the lease renewal, interims
    alongside an exact job): the rolled-back ``session`` fixture shares one connection."""
    from app.core.db import create_schema, make_engine
    from tests.conftest import fresh_pg_database

    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path / 'own.db'}")
        create_schema(eng)
        yield eng
        eng.dispose()
        return
    with fresh_pg_database() as url:
        eng = make_engine(url)
        create_schema(eng)
        yield eng
        eng.dispose()


@pytest.fixture
def own_toy(own_engine, settings, tmp_path: Path):  # noqa: ANN001, ANN201
    """``own_engine`` with the toy model registered (artifacts under ``tmp_path``)."""
    from sqlmodel import Session

    from app.services.models import registration

    with Session(own_engine) as s:
        registration.register_demo_model(s, name="toy", secret=settings.subject_key_secret, artifacts_dir=tmp_path,
                                         device="cpu")
        s.commit()
    return own_engine
