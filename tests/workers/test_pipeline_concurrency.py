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
from app.services.models import registration
from app.services.requests import erasure
from tests.conftest import fresh_pg_database
from workers import pipeline

pytestmark = pytest.mark.integration


def test_two_workers_never_fork_versions_or_double_process(settings, tmp_path) -> None:  # noqa: ANN001
    """The contention is forced, not hoped for: while one worker holds the model's lease (inside
    its job, at publish), the other tries to drain and is turned away; then the roles swap. Both
    workers run jobs, every request is in exactly one job, the history is linear."""
    with fresh_pg_database() as url:
        engine = make_engine(url)
        create_schema(engine)
        with Session(engine) as s:
            registration.register_demo_model(s, name="toy", secret=settings.subject_key_secret,
                                             artifacts_dir=tmp_path, device="cpu")
            s.commit()
        cfg = settings.model_copy(update={"data_dir": tmp_path, "batch_window_s": 0.0, "deploy_timeout_s": 5,
                                          "job_lease_s": 60})
        ids: list[str] = []
        refused: dict[int, list[list[str]]] = {0: [], 1: []}

        def submit(subject: str) -> None:
            with Session(engine) as s:
                req, _ = erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, subject))
                ids.append(req.id)
                s.commit()

        def contender(i: int, arrives: str | None):  # noqa: ANN202
            def publish(name: str, version: int) -> None:
                # Inside worker i's job, lease held: the other worker must get nothing.
                if not refused[1 - i]:
                    got: list[list[str]] = []
                    t = threading.Thread(target=lambda: got.append(pipeline.drain(workers_[1 - i], "toy")))
                    t.start()
                    t.join(60)
                    refused[1 - i].append(got[0] if got else ["<no answer>"])
                    if arrives:
                        submit(arrives)  # arrives while i holds the lease: i's drain loop takes it too
            return publish

        workers_ = [pipeline.Worker(settings=cfg, engine=engine, device=torch.device("cpu"), owner=f"w{i}",
                                    publish=contender(i, "toy-04" if i == 0 else None)) for i in range(2)]
        submit("toy-02")
        submit("toy-03")
        first = pipeline.drain(workers_[0], "toy")
        submit("toy-07")
        second = pipeline.drain(workers_[1], "toy")
        with Session(engine) as s:
            jobs = s.exec(select(UnlearningJob)).all()
            handled = [rid for j in jobs for rid in j.request_ids]
            by_worker = {j.worker_host for j in jobs}
            statuses = {r.id: r.status for r in s.exec(select(ErasureRequest)).all()}
            versions = s.exec(select(ModelVersion).order_by(ModelVersion.number)).all()
        engine.dispose()
    assert refused == {0: [[]], 1: [[]]}  # each was turned away while the other held the lease
    assert len(first) == 2 and len(second) == 1 and by_worker == {"w0", "w1"}  # both took jobs
    assert sorted(handled) == sorted(ids) and len(ids) == 4  # each request in exactly one job
    assert all(statuses[i] == "completed" for i in ids), statuses
    # A linear history: every version's parent is the one before it.
    assert [v.parent for v in versions] == [None] + [v.number for v in versions[:-1]]
