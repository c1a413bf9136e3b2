"""Two workers draining the same model on PostgreSQL: every request is handled exactly once and
the version history never forks (the per-model lease + SKIP LOCKED)."""

from __future__ import annotations

import threading

import pytest
import torch
from sqlmodel import Session, select

from app.core.db import create_schema, make_engine
from app.core.security import subject_key
from app.db.models import ErasureRequest, ModelVersion, UnlearningJob
from app.services import erasure, registration
from tests.conftest import fresh_pg_database
from workers import pipeline

pytestmark = pytest.mark.integration


def test_two_workers_never_fork_versions_or_double_process(settings, tmp_path) -> None:  # noqa: ANN001
    with fresh_pg_database() as url:
        engine = make_engine(url)
        create_schema(engine)
        with Session(engine) as s:
            registration.register_demo_model(s, name="toy", secret=settings.subject_key_secret,
                                             artifacts_dir=tmp_path, device="cpu")
            s.commit()
        cfg = settings.model_copy(update={"data_dir": tmp_path, "batch_window_s": 0.0, "deploy_timeout_s": 5,
                                          "job_lease_s": 60})
        workers_ = [pipeline.Worker(settings=cfg, engine=engine, device=torch.device("cpu"), owner=f"w{i}")
                    for i in range(2)]
        subjects = ["toy-02", "toy-03", "toy-04", "toy-07", "toy-08", "toy-09"]
        ids = []
        errors: list[BaseException] = []

        def drain(w: pipeline.Worker) -> None:
            try:
                for _ in range(3):
                    pipeline.drain(w, "toy")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=drain, args=(w,)) for w in workers_]
        for i, subject in enumerate(subjects):
            with Session(engine) as s:
                req, _ = erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, subject))
                ids.append(req.id)
                s.commit()
            if i == 1:
                for t in threads:
                    t.start()
        for t in threads:
            t.join()
        for w in workers_:  # whatever arrived after the last drain
            pipeline.drain(w, "toy")
        with Session(engine) as s:
            jobs = s.exec(select(UnlearningJob)).all()
            handled = [rid for j in jobs for rid in j.request_ids]
            statuses = {r.id: r.status for r in s.exec(select(ErasureRequest)).all()}
            versions = s.exec(select(ModelVersion).order_by(ModelVersion.number)).all()
        engine.dispose()
    assert not errors, errors
    assert sorted(handled) == sorted(ids)  # each request in exactly one job
    assert all(statuses[i] == "completed" for i in ids), statuses
    # A linear history: every version's parent is the one before it.
    assert [v.parent for v in versions] == [None] + [v.number for v in versions[:-1]]
