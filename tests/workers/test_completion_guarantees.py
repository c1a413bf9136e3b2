"""The guarantees behind ``completed`` where they live in the worker and the replica (issue 23):
a tainted version is refused for rollback and for loading even while its weights exist, a
rollback during a running job fences it and the erasure still completes, a subject held only in
held-out samples, a second request while the first job runs, and a deadline passing while
``failed``. Pipeline functions called directly on a real DB (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlmodel import Session, select

from app.core import db
from app.core.errors import Conflict
from app.core.security import subject_key
from app.db.models import ErasureRequest, Model, ModelVersion, Sample, UnlearningJob, utcnow
from app.serving.holder import ModelHolder, UpdateListener
from app.services import audit
from app.services.requests import deadlines, erasure
from app.services.models import catalog as model_service
from workers import pipeline


def _worker(settings, **update) -> pipeline.Worker:  # noqa: ANN001
    return pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2, **update}),
                           engine=None, device=torch.device("cpu"), owner="guarantee-test", sleep=lambda s: None)


def _request(session: Session, settings, subject: str) -> ErasureRequest:  # noqa: ANN001
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject))
    session.commit()
    return req


def _versions(session: Session) -> dict[int, ModelVersion]:
    session.expire_all()
    return {v.number: v for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == "toy")).all()}


def test_a_kept_tainted_version_is_refused_for_rollback_and_for_loading(session: Session, settings, toy_model) -> None:  # noqa: ANN001
    listener = UpdateListener(ModelHolder(), settings)  # a replica, synced when the worker publishes
    w = _worker(settings, keep_tainted_versions=1)
    w.publish = lambda name, version: listener.sync_once()
    first = _request(session, settings, "toy-02")
    pipeline.drain(w, "toy")
    v = _versions(session)
    assert session.get(ErasureRequest, first.id).status == "completed"
    assert v[1].state == "verified" and Path(v[1].artifact_path).exists()  # kept: tainted, not purged
    with pytest.raises(Conflict) as refused:
        model_service.rollback(session, name="toy", number=1, actor="operator")
    assert refused.value.code == "tainted_version"
    session.rollback()

    # A replica told (by a rogue write) to serve the tainted version refuses to load it: it keeps
    # the clean one and reports not ready.
    assert listener.holder.versions() == {"toy": 2} and listener.ready()
    model = session.get(Model, "toy")
    model.serving_version = 1
    session.add(model)
    session.commit()
    assert listener.sync_once() == [] and listener.holder.versions() == {"toy": 2}
    assert not listener.ready()
    model.serving_version = 2
    session.add(model)
    session.commit()

    # The next completion purges it (only the newest tainted version is kept).
    _request(session, settings, "toy-03")
    pipeline.drain(w, "toy")
    v = _versions(session)
    assert v[1].state == "purged" and not Path(v[1].artifact_path).exists()
    assert v[2].state == "verified" and Path(v[2].artifact_path).exists() and v[3].state == "verified"


def test_rollback_during_a_running_job_fences_it_and_the_erasure_still_completes(
        session: Session, settings, toy_model, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    from workers.unlearning import engine

    # A second clean version to roll back to (no erasure has completed yet: both are clean).
    v1 = _versions(session)[1]
    from app.ml.checkpoint import load_checkpoint
    from app.ml.specs import get_spec

    net, meta, _ = load_checkpoint(v1.artifact_path, get_spec("toy"))
    model_service.register_trained(session, name="toy", model_obj=net, meta=meta, metrics=v1.metrics,
                                   artifacts_dir=settings.artifacts_dir, method="operator_copy", parent=1)
    model_service.set_serving(session, name="toy", number=2, actor="operator")
    session.commit()
    req = _request(session, settings, "toy-02")
    real_forget, rolled = engine.forget, []

    def forget_while_an_operator_rolls_back(**kwargs):  # noqa: ANN003, ANN202
        if not rolled:  # the job unlearns from v2; meanwhile an operator rolls back to v1
            with db.new_session() as s:
                model_service.rollback(s, name="toy", number=1, actor="operator")
                s.commit()
            rolled.append(True)
        return real_forget(**kwargs)

    monkeypatch.setattr(engine, "forget", forget_while_an_operator_rolls_back)
    w = _worker(settings)
    [job_id] = set(pipeline.drain(w, "toy"))
    session.expire_all()
    assert session.get(ErasureRequest, req.id).status == "completed"
    audit.sync(session)
    fenced = audit.list_events(session, type="job_fenced", limit=10)
    assert [(e.payload["job_id"], e.payload["expected_version"], e.payload["serving_version"]) for e in fenced] \
        == [(job_id, 2, 1)]
    job = session.get(UnlearningJob, job_id)
    assert job.deliveries >= 1 and job.version_before in (1, None)
    v = _versions(session)
    # The fenced result was dropped: the clean version descends from the rolled-back-to v1.
    assert sorted(v) == [1, 2, 3] and v[3].parent == 1 and session.get(Model, "toy").serving_version == 3
    assert v[1].state == v[2].state == "purged"


def test_a_subject_only_in_held_out_samples_completes_without_a_new_version(session: Session, settings,  # noqa: ANN001
                                                                            toy_model) -> None:
    key = subject_key(settings.subject_key_secret, "toy-00")  # holdout only
    assert {s.split for s in session.exec(select(Sample).where(Sample.subject_key == key)).all()} == {"holdout"}
    req = _request(session, settings, "toy-00")
    assert req.status == "queued"  # held: their rows exist, even if never trained on
    pipeline.drain(_worker(settings), "toy")
    session.expire_all()
    done = session.get(ErasureRequest, req.id)
    assert done.status == "completed" and done.result["models"]["toy"]["method"] == "none"
    v = _versions(session)
    assert sorted(v) == [1] and req.id in v[1].free_of and v[1].state == "verified"  # never trained on: still clean
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all() == []  # the rows are gone


def test_a_second_request_while_the_first_job_runs_is_erased_too(session: Session, settings, toy_model,  # noqa: ANN001
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.unlearning import engine

    first = _request(session, settings, "toy-02")
    real_forget, second = engine.forget, []

    def forget_while_the_subject_asks_again(**kwargs):  # noqa: ANN003, ANN202
        if not second:
            with db.new_session() as s:
                req, _ = erasure.create_request(s, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
                s.commit()
                second.append(req.id)
        return real_forget(**kwargs)

    monkeypatch.setattr(engine, "forget", forget_while_the_subject_asks_again)
    pipeline.drain(_worker(settings), "toy")
    session.expire_all()
    a, b = session.get(ErasureRequest, first.id), session.get(ErasureRequest, second[0])
    assert a.status == "completed" and b.status == "completed", (a.status, b.status)
    key = subject_key(settings.subject_key_secret, "toy-02")
    assert session.exec(select(Sample).where(Sample.subject_key == key)).all() == []
    serving = _versions(session)[session.get(Model, "toy").serving_version]
    ra, rb = a.result["models"]["toy"], b.result["models"]["toy"]
    # The second request waited for its own job (it arrived after the first was taken), which found
    # the rows already gone and recorded the clean version as free of it: no second retrain.
    assert rb["job_id"] != ra["job_id"] and rb["method"] == "none"
    assert rb["version_after"] == ra["version_after"] == serving.number and {a.id, b.id} <= set(serving.free_of)


def test_a_deadline_passing_while_failed_is_overdue_and_a_retry_still_completes(session: Session, settings,  # noqa: ANN001
                                                                                toy_model, monkeypatch) -> None:
    from workers.unlearning import engine

    req = _request(session, settings, "toy-02")
    real_forget = engine.forget

    def broken(**kwargs):  # noqa: ANN003, ANN202
        raise RuntimeError("simulated unlearning crash")

    monkeypatch.setattr(engine, "forget", broken)
    w = _worker(settings, max_request_attempts=1)
    for _ in range(w.settings.max_job_attempts + 2):  # re-delivered until the job gives up: failed
        with contextlib.suppress(RuntimeError):
            pipeline.drain(w, "toy")
        session.expire_all()
        if session.get(ErasureRequest, req.id).status == "failed":
            break
    session.expire_all()
    failed = session.get(ErasureRequest, req.id)
    assert failed.status == "failed"
    failed.due_at = utcnow() - timedelta(days=1)  # the month passes while it is failed
    session.add(failed)
    session.commit()
    assert [r.id for r in erasure.list_requests(session, overdue=True)] == [req.id]
    assert deadlines.open_by_bucket(session, now=utcnow())["overdue"] == 1
    assert deadlines.check(session, now=utcnow()) == [req.id]  # the operator warning fires
    monkeypatch.setattr(engine, "forget", real_forget)  # repaired
    erasure.retry_request(session, request_id=req.id, actor="operator")
    session.commit()
    pipeline.drain(w, "toy")
    session.expire_all()
    done = session.get(ErasureRequest, req.id)
    assert done.status == "completed" and done.completed_at > done.due_at  # late, and recorded as such
    assert erasure.list_requests(session, overdue=True) == []


def test_a_lost_commits_orphan_and_the_retrys_weights_never_share_a_path(session: Session, settings,
                                                                          toy_model) -> None:  # noqa: ANN001
    """A version whose commit was lost leaves its weights as an orphan, and the retry takes the same
    number. The reconciler may already have put that orphan on the to-delete list: the retry's
    committed file must not be the path the drain will delete."""
    from app.ml.checkpoint import load_checkpoint
    from app.ml.specs import get_spec
    from app.services.storage import deletions

    v1 = _versions(session)[1]
    net, meta, _ = load_checkpoint(v1.artifact_path, get_spec("toy"))
    lost = model_service.register_trained(session, name="toy", model_obj=net, meta=meta, metrics=v1.metrics,
                                          artifacts_dir=settings.artifacts_dir, method="operator_copy", parent=1)
    orphan = Path(lost.artifact_path)
    session.rollback()  # the commit never happened: v2's file is an orphan
    assert orphan.exists()
    deletions.schedule_deletion(session, orphan, reason="orphan")  # the reconciler found it
    session.commit()
    retry = model_service.register_trained(session, name="toy", model_obj=net, meta=meta, metrics=v1.metrics,
                                           artifacts_dir=settings.artifacts_dir, method="operator_copy", parent=1)
    session.commit()
    assert retry.number == 2 and Path(retry.artifact_path) != orphan
    assert deletions.drain(db.new_session) == [str(orphan.resolve())]
    assert not orphan.exists() and Path(retry.artifact_path).exists()
