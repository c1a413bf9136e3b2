"""The worker pipeline called directly (no Celery) on a real DB, rolled back per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from app.db.models import ErasureRequest, Model, ModelVersion, Replica, Sample, UnlearningJob, utcnow
from app.services import audit
from app.services.requests import erasure
from app.core.security import subject_key
from workers import pipeline


@pytest.fixture
def worker(settings):  # noqa: ANN001, ANN201
    import torch

    published: list[tuple[str, int]] = []
    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2}),
                        engine=None, device=torch.device("cpu"), owner="test-worker",
                        publish=lambda n, v: published.append((n, v)), sleep=lambda s: None)
    w.published = published  # type: ignore[attr-defined]
    return w


def _request(session: Session, settings, subject: str, policy: str = "auto") -> str:  # noqa: ANN001
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject),
                                    policy=policy)
    session.commit()
    return req.id


def test_job_forgets_publishes_and_completes(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    key = subject_key(settings.subject_key_secret, "toy-02")
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all()
    rid = _request(session, settings, "toy-02")
    jobs = pipeline.drain(worker, "toy")
    assert len(jobs) == 1
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    assert req.status == "completed" and req.percent == 100
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all() == []  # raw samples purged
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 2)).one()
    assert rid in v2.free_of and Path(v2.artifact_path).exists()
    assert worker.published == [("toy", 2)]
    v1 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 1)).one()
    assert v1.state == "purged" and not Path(v1.artifact_path).exists()  # tainted weights are gone
    result = req.result["models"]["toy"]
    assert result["version_before"] == 1 and result["version_after"] == 2
    assert result["attempts"] and result["attempts"][-1]["passed"]
    assert "mia_auc" in result["attempts"][-1]["report"]
    # auto's escalation decision (app.ml.policy.plan) is recorded with the job and in the audit trail.
    decision = result["timings"]["decision"]
    assert decision["rule"] in ("approximate_first", "no_cost_data") and decision["reason"]
    audit.sync(session)
    attempted = audit.list_events(session, type="unlearning_attempted", limit=100)
    assert attempted and all(e.payload["decision"] == decision["rule"] and e.payload["decision_reason"]
                             for e in attempted)
    types = [e.type for e in audit.list_events(session, request_id=rid, limit=100)]
    assert types[:2] == ["erasure_requested", "erasure_queued"]
    assert "samples_deleted" in types and types[-1] == "erasure_completed"
    report = audit.verify(session)
    assert report["ok"] and report["pending"] == 0


def test_batch_gathers_queued_requests_into_one_job(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    ids = [_request(session, settings, s) for s in ("toy-02", "toy-03", "toy-04")]
    assert len(pipeline.drain(worker, "toy")) == 1
    job = session.exec(select(UnlearningJob)).one()
    assert sorted(job.request_ids) == sorted(ids)
    assert all(session.get(ErasureRequest, i).status == "completed" for i in ids)


def test_completion_waits_for_live_replicas(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    session.add(Replica(replica_id="r1", model_name="toy", version=1, loaded_at=utcnow()))
    session.commit()
    rid = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    # The replica never loaded v2 within the deploy timeout: not completed, still owed, retried later.
    assert req.status == "queued" and req.stage == "retry_scheduled" and "did not load" in req.error
    (target,) = erasure.targets_of(session, rid)
    assert target.attempts == 1 and target.not_before is not None
    assert pipeline.drain(worker, "toy") == []  # not before its backoff
    v1 = session.exec(select(ModelVersion).where(ModelVersion.number == 1, ModelVersion.model_name == "toy")).one()
    assert v1.state != "purged"  # still served by r1: never purged under a live replica
    # Each retry finds v2 already free of the subject and only waits for the replica again;
    # after max_request_attempts jobs the request fails visibly (still owed: retry-able).
    worker.settings = worker.settings.model_copy(update={"retry_backoff_s": 0})
    target.not_before = utcnow()  # the first backoff has passed
    session.add(target)
    session.commit()
    assert len(pipeline.drain(worker, "toy")) == worker.settings.max_request_attempts - 1
    session.refresh(req)
    assert req.status == "failed" and "did not load" in req.error
    session.refresh(target)
    assert target.attempts == worker.settings.max_request_attempts
    assert session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy")).all()[-1].number == 2
    # The replica catches up; an operator retries: the request completes without a new version.
    session.exec(select(Replica)).one().version = 2
    session.commit()
    erasure.retry_request(session, request_id=rid, actor="test")
    session.commit()
    pipeline.drain(worker, "toy")
    session.refresh(req)
    assert req.status == "completed" and req.result["models"]["toy"]["version_after"] == 2


def test_interrupted_job_resumes_then_fails_after_max_attempts(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    rid = _request(session, settings, "toy-02")
    job_id = pipeline.next_job(worker, "toy")  # started ... and the worker "dies" here
    assert pipeline.next_job(worker, "toy") == job_id  # re-delivery resumes the same job
    for _ in range(worker.settings.max_job_attempts):
        pipeline.next_job(worker, "toy")
    job = session.get(UnlearningJob, job_id)
    session.refresh(job)
    assert job.status == "failed"
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    # The job gave up; the erasure did not: it is owed and scheduled again.
    assert req.status == "queued" and req.stage == "retry_scheduled" and "interrupted" in req.error


def test_reconciler_resends_queued_work(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    _request(session, settings, "toy-02")
    sent: list[str] = []
    from workers.reconcile import reconcile

    assert reconcile(worker, send=sent.append) == ["toy"] and sent == ["toy"]


def test_sisa_model_is_unlearned_exactly_and_old_slices_are_purged(session: Session, settings, worker) -> None:  # noqa: ANN001
    from app.ml.checkpoint import companion_dirs, read_meta
    from app.services.models import registration

    registration.register_demo_model(session, name="toy", secret=settings.subject_key_secret,
                                     artifacts_dir=settings.artifacts_dir / "sisa-test", device="cpu",
                                     training={"sisa": {"shards": 4, "slices": 3}})
    session.commit()
    v1 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 1)).one()
    old_dirs = companion_dirs(read_meta(v1.artifact_path))
    assert old_dirs and all(d.exists() for d in old_dirs)
    rid = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    assert req.status == "completed", req.error
    assert req.result["models"]["toy"]["method"] == "sisa"  # never an approximate method on a SISA model
    session.refresh(v1)
    assert v1.state == "purged" and not any(d.exists() for d in old_dirs)
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 2)).one()
    assert all(d.exists() for d in companion_dirs(read_meta(v2.artifact_path)))


def test_art19_recipients_are_notified_on_completion(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    import json

    from app.db.models import CallbackDelivery
    from app.services.models import catalog as models

    models.set_recipients(session, name="toy", actor="test", recipients=[
        {"name": "edge-fleet", "contact": "ops@example.org", "callback_url": "http://127.0.0.1:9/art19"},
        {"name": "analytics-team", "contact": "data@example.org", "callback_url": None}])
    session.commit()
    rid = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    assert req.result["models"]["toy"]["recipients_notified"] == ["edge-fleet", "analytics-team"]
    notices = session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "recipient")).all()
    assert len(notices) == 1 and notices[0].url == "http://127.0.0.1:9/art19"
    body = json.loads(notices[0].body)
    assert body["superseded_version"] == 1 and body["clean_version"] == 2 and len(body["clean_sha256"]) == 64
    audit.sync(session)
    assert [e.type for e in audit.list_events(session, request_id=rid, type="recipients_notified")]


def test_each_worker_instance_has_its_own_lease_owner(settings) -> None:  # noqa: ANN001
    import os

    import torch

    # Celery's prefork children share whatever was computed at import time; the owner must not be.
    a, b = (pipeline.Worker(settings=settings, engine=None, device=torch.device("cpu")) for _ in range(2))
    assert a.owner != b.owner
    assert f":{os.getpid()}:" in a.owner


def test_worker_that_lost_its_lease_drops_its_result(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    import dataclasses

    from app.db.models import Model

    rid = _request(session, settings, "toy-02")
    assert pipeline.acquire_lock(worker, "toy")
    job_id = pipeline.next_job(worker, "toy")
    # The worker stalls past its lease and another worker takes the model over.
    model = session.get(Model, "toy")
    model.lock_owner = "other-worker"
    session.add(model)
    session.commit()
    pipeline.run_job(worker, job_id)
    session.expire_all()
    assert [v.number for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy")).all()] == [1]
    assert session.get(UnlearningJob, job_id).status == "running"  # left for the new lease holder
    audit.sync(session)
    fenced = audit.list_events(session, type="job_fenced", limit=10)
    assert [e.payload["job_id"] for e in fenced] == [job_id]
    # The stalled worker's drain loop stops too: it must not resume the job the other one runs.
    assert pipeline.drain(worker, "toy") == []
    # The new holder resumes the job and completes it, with one new version.
    other = dataclasses.replace(worker, owner="other-worker")
    assert pipeline.drain(other, "toy") == [job_id]
    session.expire_all()
    versions = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy")
                            .order_by(ModelVersion.number)).all()
    assert [(v.number, v.parent) for v in versions] == [(1, None), (2, 1)]
    assert session.get(ErasureRequest, rid).status == "completed"


def _db_error(invalidated: bool) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("UPDATE unlearningjob ...", {}, Exception("server closed the connection unexpectedly"),
                            connection_invalidated=invalidated)


def test_database_outages_mid_job_resume_it_without_counting_deliveries(
        session: Session, settings, toy_model, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    rid = _request(session, settings, "toy-02")
    real, calls = pipeline.run_job, []

    def flaky(w, job_id):  # noqa: ANN001, ANN202
        calls.append(job_id)
        if len(calls) <= worker.settings.max_job_attempts + 2:  # more outages than deliveries allowed
            raise _db_error(invalidated=True)
        return real(w, job_id)

    monkeypatch.setattr(pipeline, "run_job", flaky)
    jobs = pipeline.drain(worker, "toy")
    assert len(jobs) == 1 and set(calls) == {jobs[0]}
    session.expire_all()
    assert session.get(ErasureRequest, rid).status == "completed"
    job = session.get(UnlearningJob, jobs[0])
    assert job.status == "completed" and job.deliveries == 1
    audit.sync(session)
    resumed = audit.list_events(session, type="job_resumed", limit=50)
    assert [e.payload["cause"] for e in resumed] == ["database_unavailable"] * (len(calls) - 1)


def test_a_repeating_database_error_still_fails_the_job_visibly(
        session: Session, settings, toy_model, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    rid = _request(session, settings, "toy-02")

    def broken(w, job_id):  # noqa: ANN001, ANN202
        raise _db_error(invalidated=False)  # the database answers; the job's statement keeps failing

    monkeypatch.setattr(pipeline, "run_job", broken)
    worker.settings = worker.settings.model_copy(update={"retry_backoff_s": 0})
    assert pipeline.drain(worker, "toy") == []
    session.expire_all()
    req = session.get(ErasureRequest, rid)
    # Every job of the erasure kept failing: after max_request_attempts jobs it fails visibly.
    assert req.status == "failed" and "interrupted" in req.error
    assert erasure.targets_of(session, rid)[0].attempts == worker.settings.max_request_attempts


def test_no_ratchet_retrain_is_served_after_an_over_fitting_approximate_version(
        session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    """Issue 8: an approximate version that fits better than any retrain must not raise the bar."""
    first = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    assert session.get(ErasureRequest, first).status == "completed"
    v2 = session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy", ModelVersion.number == 2)).one()
    assert v2.method != "retrain"
    # Pretend v2 remembers the retain set better than any honest retrain does.
    v2.metrics = {**v2.metrics, "retain_acc": 1.0, "train_acc": 1.0, "test_acc": 0.99}
    session.add(v2)
    session.commit()
    second = _request(session, settings, "toy-03", policy="retrain")
    pipeline.drain(worker, "toy")
    req = session.get(ErasureRequest, second)
    session.refresh(req)
    assert req.status == "completed", req.error
    assert req.result["models"]["toy"]["method"] == "retrain"
    report = req.result["models"]["toy"]["attempts"][-1]["report"]
    assert "first version" in report["gates"]["test_acc"]["reason"]  # the fixed bar, not v2's 0.99
    session.expire_all()
    assert session.get(Model, "toy").serving_version == 3


def test_a_failed_erasure_stays_owed_and_a_new_request_reopens_it(
        session: Session, settings, toy_model, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import workers.unlearning.engine as engine
    from workers.unlearning.engine import ForgetOutcome

    real = engine.forget
    monkeypatch.setattr(engine, "forget", lambda **kw: ForgetOutcome(kw["model"], kw["meta"], "retrain", False, []))
    worker.settings = worker.settings.model_copy(update={"max_request_attempts": 1})
    failed_id = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    session.expire_all()
    failed = session.get(ErasureRequest, failed_id)
    assert failed.status == "failed" and "no unlearning candidate passed" in failed.error
    assert session.get(Model, "toy").serving_version == 1  # the model still holds the subject
    key = subject_key(settings.subject_key_secret, "toy-02")
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all()  # still tracked (flagged deleted)
    # A new request for the same subject is never no_data while a servable version holds them.
    again, created = erasure.create_request(session, subject_key=key)
    session.commit()
    assert created and again.status == "queued"
    session.refresh(failed)
    assert failed.status == "queued" and failed.error is None  # reopened: joins the new request
    monkeypatch.setattr(engine, "forget", real)
    assert len(pipeline.drain(worker, "toy")) == 1
    session.expire_all()
    assert {session.get(ErasureRequest, i).status for i in (failed_id, again.id)} == {"completed"}
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all() == []
    # Resubmitted after completion: completes at once as already erased, no job, no new version.
    third, _ = erasure.create_request(session, subject_key=key)
    session.commit()
    assert third.status == "completed" and third.result["already_erased_by"] in (failed_id, again.id)
    assert session.get(Model, "toy").serving_version == 2


def test_operator_retry_of_a_failed_erasure(session: Session, settings, toy_model, worker, client, admin_headers,
                                            monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import workers.unlearning.engine as engine
    from workers.unlearning.engine import ForgetOutcome

    real = engine.forget
    monkeypatch.setattr(engine, "forget", lambda **kw: ForgetOutcome(kw["model"], kw["meta"], "retrain", False, []))
    worker.settings = worker.settings.model_copy(update={"max_request_attempts": 1})
    rid = _request(session, settings, "toy-02")
    r = client.post(f"/v1/erasure-requests/{rid}/retry", headers=admin_headers)
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "not_retryable"
    pipeline.drain(worker, "toy")
    r = client.get(f"/v1/erasure-requests/{rid}", headers=admin_headers)
    assert r.json()["status"] == "failed" and r.json()["models"][0]["attempts"] == 1
    monkeypatch.setattr(engine, "forget", real)
    r = client.post(f"/v1/erasure-requests/{rid}/retry", headers=admin_headers)
    assert r.status_code == 202 and r.json()["status"] == "queued" and r.json()["models"][0]["attempts"] == 0
    pipeline.drain(worker, "toy")
    assert client.get(f"/v1/erasure-requests/{rid}", headers=admin_headers).json()["status"] == "completed"
    audit.sync(session)
    types = [e.type for e in audit.list_events(session, request_id=rid, limit=100)]
    assert types.index("erasure_failed") < types.index("erasure_reopened") < types.index("erasure_completed")


def test_subjects_still_owed_an_erasure_are_never_trained_on(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    from workers.problem import collect

    in_batch, waiting = _request(session, settings, "toy-02"), _request(session, settings, "toy-03")
    worker.settings = worker.settings.model_copy(update={"batch_max": 1})
    job_id = pipeline.next_job(worker, "toy")
    assert session.get(UnlearningJob, job_id).request_ids == [in_batch]
    problem = collect(worker, job_id)
    keys = {subject_key(settings.subject_key_secret, s) for s in ("toy-02", "toy-03")}
    assert {e.subject_id for e in problem.forget} == {subject_key(settings.subject_key_secret, "toy-02")}
    # toy-03's erasure is only queued, yet its samples are already out of the retain set.
    assert not keys & {e.subject_id for e in problem.retain} and problem.retain
    assert session.get(ErasureRequest, waiting).status == "queued"


def test_a_request_of_two_models_completes_only_when_both_are_clean(
        session: Session, settings, toy_model, worker, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import workers.unlearning.engine as engine
    from app.services.models import registration
    from workers.unlearning.engine import ForgetOutcome

    registration.register(session, name="toy-b", spec="toy", secret=settings.subject_key_secret,
                          artifacts_dir=settings.artifacts_dir, device="cpu")
    session.commit()
    rid = _request(session, settings, "toy-02")
    assert sorted(t.model_name for t in erasure.targets_of(session, rid)) == ["toy", "toy-b"]
    assert len(pipeline.drain(worker, "toy-b")) == 1
    session.expire_all()
    req = session.get(ErasureRequest, rid)
    assert req.status != "completed" and list(req.result["models"]) == ["toy-b"]  # toy still holds them
    real = engine.forget
    monkeypatch.setattr(engine, "forget", lambda **kw: ForgetOutcome(kw["model"], kw["meta"], "retrain", False, []))
    worker.settings = worker.settings.model_copy(update={"max_request_attempts": 1})
    pipeline.drain(worker, "toy")
    session.expire_all()
    assert session.get(ErasureRequest, rid).status == "failed"
    monkeypatch.setattr(engine, "forget", real)
    erasure.retry_request(session, request_id=rid, actor="test")
    session.commit()
    pipeline.drain(worker, "toy")
    session.expire_all()
    req = session.get(ErasureRequest, rid)
    assert req.status == "completed" and sorted(req.result["models"]) == ["toy", "toy-b"]


def test_a_jobs_log_records_name_its_job_and_model(session: Session, settings, toy_model, worker,  # noqa: ANN001
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON logs (issue 11 section 3): the worker sets ``job_id`` and ``model`` around a job."""
    import io
    import json
    import logging

    from app.core.logging import configure_logging

    class Stop(Exception):
        pass

    def collect(w, job_id):  # noqa: ANN001, ANN202 - the job's first step, cut short
        logging.getLogger("lethe.problem").info("collecting")
        raise Stop

    monkeypatch.setattr(pipeline, "collect", collect)
    out = io.StringIO()
    configure_logging("INFO", json_lines=True, stream=out)
    try:
        _request(session, settings, "toy-02")
        with pytest.raises(Stop):
            pipeline.drain(worker, "toy")
    finally:
        configure_logging("INFO", json_lines=False)
    (record,) = [r for r in map(json.loads, out.getvalue().splitlines()) if r["message"] == "collecting"]
    job = session.exec(select(UnlearningJob)).one()
    assert record["job_id"] == job.id and record["model"] == "toy"


def test_a_model_whose_approximate_path_keeps_failing_goes_exact_and_counts_it(
        session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    """The streak (app.ml.policy.next_failed_streak) is the model's: read by the job, grown when the job
    went exact because of it, and visible in the job's recorded decision."""
    model = session.get(Model, "toy")
    model.config = {**model.config, "reference": {**(model.config.get("reference") or {}), "retrain_seconds": 1.0},
                    "escalation": {"approx_failed_streak": 5}}
    session.add(model)
    session.commit()
    rid = _request(session, settings, "toy-02")
    assert len(pipeline.drain(worker, "toy")) == 1
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    result = req.result["models"]["toy"]
    assert req.status == "completed" and [a["method"] for a in result["attempts"]] == ["retrain"]
    assert result["timings"]["decision"]["rule"] == "exact_direct"
    assert result["timings"]["decision"]["failed_streak"] == 5
    session.refresh(model)
    assert model.config["escalation"]["approx_failed_streak"] == 6
