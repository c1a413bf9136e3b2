"""A request that arrives while its model's exact job trains gets its interim at once, from the same
worker under the same lease (workers/pipeline.py ``InterimsAlongside``; issue 16), and the exact
version that publishes afterwards keeps that subject's own parameters cleared without claiming to be
free of them. Real database files / PostgreSQL: the interim thread needs connections of its own."""

from __future__ import annotations

import time

import pytest
import torch
from sqlmodel import Session, select

from app.core.security import subject_key
from app.db.models import ErasureRequest, Model, UnlearningJob, as_utc
from app.services.models import catalog as model_service
from app.services.models import schedule as schedule_service
from app.services.requests import erasure
from workers import pipeline, problem

pytestmark = pytest.mark.integration


def _request(engine, settings, subject: str) -> str:  # noqa: ANN001
    with Session(engine) as s:
        req, _ = erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, subject))
        s.commit()
        return req.id


def _status(engine, rid: str) -> ErasureRequest:  # noqa: ANN001
    with Session(engine) as s:
        req = s.get(ErasureRequest, rid)
        s.expunge(req)
        return req


@pytest.mark.parametrize("in_process", [True, False], ids=["own-process", "thread"])
def test_an_interim_runs_while_the_exact_job_trains(own_toy, settings, tmp_path, in_process: bool,  # noqa: ANN001
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.unlearning import engine as unlearning_engine

    engine = own_toy
    with Session(engine) as s:
        model_service.set_policy(s, name="toy", changes={"schedule": {"exact_within_s": 86400, "interim": "params"}},
                                 actor="test")
        s.commit()
    cfg = settings.model_copy(update={"data_dir": tmp_path, "artifacts_dir": tmp_path, "batch_window_s": 0.0,
                                      "deploy_timeout_s": 5, "job_lease_s": 60, "retry_backoff_s": 0.0,
                                      "job_seed": 0})
    # own-process: as the Celery worker runs them (workers/alongside.py), out of the training loop's GIL
    w = pipeline.Worker(settings=cfg, engine=engine, device=torch.device("cpu"), owner="w",
                        alongside_process=in_process)
    first = _request(engine, settings, "toy-02")
    pipeline.drain(w, "toy")
    assert _status(engine, first).status == "scheduled"
    with Session(engine) as s:
        schedule_service.request_exact_now(s, name="toy", actor="test")
        s.commit()

    late: list[str] = []
    real_forget = unlearning_engine.forget

    def forget_while_a_request_arrives(**kw):  # noqa: ANN003, ANN202
        late.append(_request(engine, settings, "toy-03"))
        deadline = time.monotonic() + 60
        while _status(engine, late[0]).status != "scheduled":  # its interim, before this job trains further
            assert time.monotonic() < deadline, "no interim while the exact job trained"
            time.sleep(0.2)
        return real_forget(**kw)

    folded: list[list[str]] = []
    real_ids = problem._subject_ids

    def subject_ids(s, p, request_ids, settings_):  # noqa: ANN001, ANN202
        folded.append(list(request_ids))
        return real_ids(s, p, request_ids, settings_)

    ran_here: list[str] = []
    real_run_job = pipeline.run_job

    def run_job(w_, job_id: str) -> None:  # noqa: ANN001
        ran_here.append(job_id)
        real_run_job(w_, job_id)

    monkeypatch.setattr(pipeline, "run_job", run_job)
    monkeypatch.setattr(unlearning_engine, "forget", forget_while_a_request_arrives)
    monkeypatch.setattr(problem, "_subject_ids", subject_ids)
    pipeline.drain(w, "toy")

    with Session(engine) as s:
        exact = s.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).one()
        interims = s.exec(select(UnlearningJob).where(UnlearningJob.phase == "interim")
                          .order_by(UnlearningJob.started_at)).all()
        serving = model_service.serving_version(s, "toy")
        parent = model_service.get_version(s, "toy", serving.parent)
        assert exact.request_ids == [first] and exact.timings["interims_alongside"] == 1
        assert len(interims) == 2 and interims[1].request_ids == late
        assert interims[1].worker_host == "w"  # the same lease owner, whichever process ran it
        # ...and in its own process, when asked: this process never ran the interim job
        assert (interims[1].id in ran_here) is not in_process
        # the exact version is built on the interim that served meanwhile: linear history, no fork
        assert serving.number == exact.version_after and parent.number == interims[1].version_after
        assert first in serving.free_of and late[0] not in serving.free_of  # still owed, and said so
        assert folded == [late]  # ...with their own parameters kept cleared in the exact version
        assert s.get(Model, "toy").lock_owner is None
    done, waiting = _status(engine, first), _status(engine, late[0])
    assert done.status == "completed"
    assert waiting.status == "scheduled" and as_utc(waiting.forgotten_at) < as_utc(exact.finished_at)
