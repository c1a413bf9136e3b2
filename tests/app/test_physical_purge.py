"""After an erasure reports ``completed``, no file under the data directory (SQLite DB, WAL, Arrow
parts, artifacts) holds the erased subject's raw feature bytes (issue 18, item 5).

Its own SQLite file and worker engine: the rolled-back test connection never commits, so nothing
would reach the files it checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from sqlmodel import Session

from app.core.db import create_schema, make_engine
from app.core.security import subject_key
from app.db.models import ErasureRequest
from app.ml.specs import get_spec
from app.services.models import registration
from app.services.requests import erasure, lifecycle
from workers import pipeline

SUBJECT = "toy-07"  # a train subject


def _needles(store: str) -> list[bytes]:
    """The subject's feature values as each store writes them: JSON text (rows) or float64 (Arrow)."""
    rows = [e.features["x"] for e in get_spec("toy").load_examples() if e.subject_id == SUBJECT]
    if store == "rows":
        return [json.dumps(x[:4])[1:-1].encode() for x in rows] + [json.dumps(x[:4], separators=(",", ":"))[1:-1]
                                                                     .encode() for x in rows]
    return [struct.pack(f"<{len(x)}d", *x) for x in rows]


def _found(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for f in root.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            hits += [f"{f.relative_to(root)}" for n in needles if n in data]
    return hits


def _erasure(tmp_path: Path, settings, store: str):  # noqa: ANN001, ANN202
    """A model of ``store`` on its own SQLite file, one erasure request for SUBJECT, and a worker."""
    local = settings.model_copy(update={"data_dir": tmp_path, "database_url": f"sqlite:///{tmp_path / 'lethe.db'}",
                                        "deploy_timeout_s": 2, "batch_window_s": 0, "job_lease_s": 3600})
    engine = make_engine(local.db_url)
    create_schema(engine)
    with Session(engine) as s:
        registration.register(s, name="toy", spec="toy", secret=local.subject_key_secret,
                              artifacts_dir=local.artifacts_dir, device="cpu", config={"store": store})
        s.commit()
    assert _found(tmp_path, _needles(store)), "the scan must see the rows before the erasure"
    with Session(engine) as s:
        req, _ = erasure.create_request(s, subject_key=subject_key(local.subject_key_secret, SUBJECT), policy="retrain")
        s.commit()
        rid = req.id
    return engine, rid, pipeline.Worker(settings=local, engine=engine, device=torch.device("cpu"), sleep=lambda s: None)


@pytest.mark.parametrize("store", ["rows", "columnar"])
def test_no_file_holds_the_erased_subjects_feature_bytes_after_completed(tmp_path: Path, settings, store) -> None:  # noqa: ANN001
    engine, rid, worker = _erasure(tmp_path, settings, store)
    assert len(pipeline.drain(worker, "toy")) == 1
    with Session(engine) as s:
        assert s.get(ErasureRequest, rid).status == "completed"
    assert _found(tmp_path, _needles(store)) == []
    engine.dispose()


@pytest.mark.parametrize("store", ["rows", "columnar"])
def test_the_files_are_already_clean_when_the_request_turns_completed(
        tmp_path: Path, settings, store, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """Issue 18 item 5: the hard delete is committed and the WAL checkpointed (and a columnar
    store's rewritten parts deleted) *before* the completion: a subscriber of the ``complete``
    transition, inside the transaction that turns the request ``completed``, scans every file under
    the data directory (DB, WAL, Arrow parts, artifacts) and finds none of the subject's bytes."""
    engine, rid, worker = _erasure(tmp_path, settings, store)
    seen: list[tuple[str, list[str]]] = []

    def scan(session: Session, req: ErasureRequest, transition: lifecycle.Transition) -> None:
        if transition.name == "complete":
            seen.append((req.id, _found(tmp_path, _needles(store))))

    monkeypatch.setattr(lifecycle, "_subscribers", [*lifecycle._subscribers, scan])
    assert len(pipeline.drain(worker, "toy")) == 1
    assert seen == [(rid, [])]
    with Session(engine) as s:
        assert s.get(ErasureRequest, rid).status == "completed"
    engine.dispose()


def test_postgresql_vacuums_the_sample_tables_after_a_completing_erasure(tmp_path: Path, settings) -> None:  # noqa: ANN001
    import time

    from sqlalchemy import text

    from tests.conftest import fresh_pg_database

    with fresh_pg_database("lethe_physical") as url:
        local = settings.model_copy(update={"data_dir": tmp_path, "database_url": url, "deploy_timeout_s": 2,
                                            "batch_window_s": 0, "job_lease_s": 3600})
        engine = make_engine(url)
        try:
            create_schema(engine)
            with Session(engine) as s:
                registration.register(s, name="toy", spec="toy", secret=local.subject_key_secret,
                                      artifacts_dir=local.artifacts_dir, device="cpu")
                req, _ = erasure.create_request(s, subject_key=subject_key(local.subject_key_secret, SUBJECT),
                                                policy="retrain")
                s.commit()
                rid = req.id
            worker = pipeline.Worker(settings=local, engine=engine, device=torch.device("cpu"), sleep=lambda s: None)
            assert len(pipeline.drain(worker, "toy")) == 1
            with Session(engine) as s:
                assert s.get(ErasureRequest, rid).status == "completed"
            for _ in range(50):  # the statistics of the VACUUM the worker ran
                with engine.connect() as conn:
                    count = conn.execute(text("SELECT vacuum_count FROM pg_stat_user_tables "
                                              "WHERE relname = 'sample'")).scalar_one()
                if count:
                    break
                time.sleep(0.1)
            assert count >= 1
        finally:
            engine.dispose()
