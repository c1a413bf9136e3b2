"""The model lease is renewed while a job reads its data (workers/lease.py, issue 16).

A job's renewal thread and the job share the database. On SQLite every transaction began with
``BEGIN IMMEDIATE``, so while ``collect`` read every live sample (seconds on the demo model under
load) the renewal's UPDATE waited for the job's own write lock: measured with a 1.5 s lease, the
first renewal took 4.9 s, the lease lapsed, and a second worker could take the model over. The
reads now run in a reader's transaction (``app.core.db.reading``); this test renews the lease from
another connection *while* ``collect`` reads, on a real database file and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
import torch
from sqlmodel import Session

from app.core.security import subject_key
from app.data import registry
from app.services.requests import erasure
from workers import pipeline, problem
from workers.lease import acquire_lock

pytestmark = pytest.mark.integration


def test_the_lease_renews_while_the_job_reads_every_live_sample(own_toy, settings, tmp_path,  # noqa: ANN001
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    engine = own_toy
    with Session(engine) as s:
        erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
        s.commit()
    cfg = settings.model_copy(update={"data_dir": tmp_path, "batch_window_s": 0.0, "job_lease_s": 6})
    w = pipeline.Worker(settings=cfg, engine=engine, device=torch.device("cpu"), owner="w")
    assert acquire_lock(w, "toy")
    job_id = pipeline.next_job(w, "toy")
    renewed: list[bool] = []
    real_live = registry.live_splits

    def live_while_renewing(session, model, splits, exclude, root, samples=None):  # noqa: ANN001, ANN202
        rows = real_live(session, model, splits, exclude, root, samples=samples)  # the read's transaction is open now
        if not renewed:
            # what the LeaseKeeper thread does every lease/3, from its own connection
            t = threading.Thread(target=lambda: renewed.append(acquire_lock(w, "toy")), daemon=True)
            t.start()
            t.join(5.0)  # SQLite's busy timeout is 30 s: a renewal stuck behind the job's lock misses this
            assert renewed == [True], "the lease renewal waited for the job's own read"
        return rows

    monkeypatch.setattr(registry, "live_splits", live_while_renewing)
    p = problem.collect(w, job_id)
    assert renewed == [True] and p.retain and p.forget
