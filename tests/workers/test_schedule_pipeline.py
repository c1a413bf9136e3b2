"""Scheduled erasures through the worker pipeline, called directly on a real DB (issue 16):
interim -> scheduled -> one exact job for every owed subject -> completed; retries; rollback."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from app.core.errors import Conflict
from app.core.security import subject_key
from app.db.models import ErasureRequest, ErasureTarget, Model, ModelVersion, Sample, UnlearningJob, as_utc
from app.services.models import compute, jobs
from app.services.models import schedule as schedule_service
from app.services.requests import erasure
from app.services.models import catalog as model_service
from workers import pipeline


@pytest.fixture
def worker(settings):  # noqa: ANN001, ANN201
    import torch

    w = pipeline.Worker(settings=settings.model_copy(update={"job_lease_s": 3600, "deploy_timeout_s": 2,
                                                             "retry_backoff_s": 0.0, "job_seed": 0}),
                        engine=None, device=torch.device("cpu"), owner="test-worker", sleep=lambda s: None)
    return w


def _schedule(session: Session, **schedule) -> None:  # noqa: ANN003
    model_service.set_policy(session, name="toy", changes={"schedule": schedule}, actor="test")
    session.commit()


def _request(session: Session, settings, subject: str) -> str:  # noqa: ANN001
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject))
    session.commit()
    return req.id


def _get(session: Session, rid: str) -> ErasureRequest:
    req = session.get(ErasureRequest, rid)
    session.refresh(req)
    return req


def test_interim_then_one_exact_job_for_every_owed_subject(session: Session, settings, toy_model, worker) -> None:  # noqa: ANN001
    _schedule(session, exact_within_s=86400, interim="params")
    burst = [_request(session, settings, s) for s in ("toy-02", "toy-03")]
    pipeline.drain(worker, "toy")  # the interim only: the exact job is a day away
    late = _request(session, settings, "toy-04")
    pipeline.drain(worker, "toy")
    ids = [*burst, late]
    interim_jobs = session.exec(select(UnlearningJob).where(UnlearningJob.phase == "interim")).all()
    assert len(interim_jobs) == 2 and not session.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).all()
    for rid in ids:
        req = _get(session, rid)
        assert req.status == "scheduled" and req.forgotten_at is not None
        assert as_utc(req.exact_due_at) == as_utc(req.received_at) + timedelta(days=1)
        assert req.result["interim"]["toy"]["verification"]  # the interim's report, shown on the request
    serving = model_service.serving_version(session, "toy")
    assert serving.number == 3 and serving.method == "params" and not set(ids) & set(serving.free_of)
    # samples excluded at once, kept until the exact erasure completes
    keys = [_get(session, r).subject_key for r in ids]
    rows = session.exec(select(Sample).where(Sample.subject_key.in_(keys))).all()  # type: ignore[attr-defined]
    assert rows and all(r.deleted for r in rows)
    assert schedule_service.at_risk_ids(session) == []

    out = schedule_service.request_exact_now(session, name="toy", actor="test")
    session.commit()
    assert out == {"model": "toy", "owed": 3}
    pipeline.drain(worker, "toy")
    exact = session.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).all()
    assert len(exact) == 1 and sorted(exact[0].request_ids) == sorted(ids)
    assert exact[0].policy == "retrain" and exact[0].timings["schedule"]["reason"] == "operator"
    assert "exact_requested_at" not in session.get(Model, "toy").config
    final = model_service.serving_version(session, "toy")
    assert set(ids) <= set(final.free_of) and final.method == "retrain"
    for rid in ids:
        assert _get(session, rid).status == "completed"
    assert session.exec(select(Sample).where(Sample.subject_key.in_(keys))).all() == []  # type: ignore[attr-defined]
    # neither the interim version nor its parent can serve again
    for number in (1, 2, 3):
        with pytest.raises(Conflict):
            model_service.rollback(session, name="toy", number=number, actor="test")
    spent = compute.per_erasure(session, name="toy")
    assert spent["erasures_completed"] == 3 and spent["by_phase"]["interim"]["jobs"] == 2
    assert spent["by_phase"]["exact"]["jobs"] == 1 and spent["compute_per_erasure_s"] > 0


def test_deadline_wakes_the_exact_job_and_a_failed_one_retries(session: Session, settings, toy_model, worker,  # noqa: ANN001
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # exact_within_s shorter than the lead (a tick + two attempts at 2x the cost): due at once
    _schedule(session, exact_within_s=20, interim="none")
    real = pipeline.unlearn_and_publish
    failures = []

    def flaky(w, job_id, problem, *, progress, settle=None):  # noqa: ANN001, ANN202
        if not failures:
            failures.append(job_id)
            with w.session() as s:
                jobs.fail_job(s, s.get(UnlearningJob, job_id), "simulated exact failure", w.settings)
                s.commit()
            return False
        return real(w, job_id, problem, progress=progress, settle=settle)

    monkeypatch.setattr(pipeline, "unlearn_and_publish", flaky)
    rid = _request(session, settings, "toy-05")
    pipeline.drain(worker, "toy")
    req = _get(session, rid)
    assert req.status == "completed" and req.forgotten_at is None  # interim none: nothing was published
    phases = [j.phase for j in session.exec(select(UnlearningJob).order_by(UnlearningJob.started_at)).all()]
    assert phases == ["interim", "exact", "exact"] and failures
    assert session.exec(select(ModelVersion).where(ModelVersion.method == "params")).all() == []
    assert as_utc(req.completed_at) <= as_utc(req.exact_due_at)


def test_the_beat_tick_wakes_only_models_whose_exact_job_is_due(session: Session, settings, toy_model,  # noqa: ANN001
                                                                worker) -> None:
    _schedule(session, exact_within_s=7 * 86400, max_owed=2, interim="none")
    _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    assert schedule_service.models_to_wake(session, worker.settings) == []  # one owed, a week to go
    req = session.exec(select(ErasureRequest)).one()
    assert req.status == "scheduled" and req.forgotten_at is None
    # a week less the lead later, the tick wakes the model
    later = as_utc(req.exact_due_at) - timedelta(seconds=1)
    model = session.get(Model, "toy")
    assert schedule_service.decision(session, model, worker.settings, now=later).reason == "deadline"
    _request(session, settings, "toy-03")  # max_owed reached once its interim step ran
    pipeline.drain(worker, "toy")
    assert all(r.status == "completed" for r in session.exec(select(ErasureRequest)).all())
    exact = session.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).one()
    assert exact.timings["schedule"]["reason"] == "max_owed" and len(exact.request_ids) == 2


def test_interim_auto_serves_a_gated_cheap_method_or_falls_back_to_params(session: Session, settings,  # noqa: ANN001
                                                                          toy_model, worker) -> None:
    _schedule(session, exact_within_s=86400, interim="auto")
    rid = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    req = _get(session, rid)
    job = session.exec(select(UnlearningJob)).one()
    tried = [a["method"] for a in job.attempts]
    assert req.status == "scheduled" and tried[0] == "neggrad_plus"  # toy's chain, exact methods left out
    passed = job.attempts[0]["passed"]
    assert job.method == ("neggrad_plus" if passed else "params") and tried == (["neggrad_plus"] if passed
                                                                                 else ["neggrad_plus", "params"])
    serving = model_service.serving_version(session, "toy")
    assert serving.method == job.method and rid not in serving.free_of
    assert req.result["interim"]["toy"]["verification"]["passed"] is job.attempts[-1]["passed"]


def test_a_worker_lost_during_the_exact_job_is_resumed_and_completes_in_time(session: Session, settings,  # noqa: ANN001
                                                                             toy_model, worker) -> None:
    import dataclasses

    _schedule(session, exact_within_s=86400, interim="params")
    ids = [_request(session, settings, s) for s in ("toy-02", "toy-03")]
    pipeline.drain(worker, "toy")
    schedule_service.request_exact_now(session, name="toy", actor="test")
    session.commit()
    # worker A takes the lease, opens the exact job and dies before running it
    dead = dataclasses.replace(worker, owner="dead-worker")
    from workers.lease import acquire_lock

    assert acquire_lock(dead, "toy")
    job_id = pipeline.next_job(dead, "toy")
    assert session.get(UnlearningJob, job_id).phase == "exact"
    model = session.get(Model, "toy")
    session.refresh(model)
    model.lock_until = model.lock_until - timedelta(hours=2)  # its lease runs out
    session.add(model)
    session.commit()
    pipeline.drain(worker, "toy")  # worker B resumes the orphan
    exact = session.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).all()
    assert [j.id for j in exact] == [job_id] and exact[0].deliveries == 2
    for rid in ids:
        req = _get(session, rid)
        assert req.status == "completed" and as_utc(req.completed_at) <= as_utc(req.exact_due_at)


def test_a_halted_fides_request_is_due_before_its_reply_token_dies(session: Session, settings, toy_model) -> None:  # noqa: ANN001
    from app.db.models import FidesResume
    from app.ml import schedule as sch

    _schedule(session, exact_within_s=7 * 86400, interim="params")
    rid = _request(session, settings, "toy-02")
    req = _get(session, rid)
    model = session.get(Model, "toy")
    assert as_utc(schedule_service.exact_due_for(session, req, model, settings)) == as_utc(req.received_at) + timedelta(days=7)
    ttl = timedelta(seconds=settings.fides_token_ttl_s)
    row = FidesResume(privacy_request_id="pri_1", request_id=rid, reply_to="http://127.0.0.1:9/resume",  # as
                      token="t", created_at=as_utc(req.received_at),  # the webhook records a halted request
                      token_expires_at=as_utc(req.received_at) + ttl)
    session.add(row)
    session.commit()
    margin = sch.margin_s(schedule_service.expected_exact_s(model), attempts=settings.max_request_attempts,
                          backoff_s=settings.retry_backoff_s)
    due = schedule_service.exact_due_for(session, req, model, settings)
    assert as_utc(due) == as_utc(req.received_at) + ttl - timedelta(seconds=margin)
    # Fides halted it again a day later with a fresh token: the deadline follows the new token, not the
    # first halt's time.
    row.token_expires_at = as_utc(req.received_at) + timedelta(days=1) + ttl
    session.add(row)
    session.commit()
    due = schedule_service.exact_due_for(session, req, model, settings)
    assert as_utc(due) == as_utc(req.received_at) + timedelta(days=1) + ttl - timedelta(seconds=margin)


def test_a_new_request_for_a_scheduled_subject_joins_the_owed_set_without_an_interim(  # noqa: ANN001
        session: Session, settings, toy_model, worker) -> None:
    _schedule(session, exact_within_s=86400, interim="params")
    first = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    interim = model_service.serving_version(session, "toy")
    assert interim.method == "params" and _get(session, first).status == "scheduled"
    again = _request(session, settings, "toy-02")  # the same person asks again (another channel)
    pipeline.drain(worker, "toy")
    assert len(session.exec(select(UnlearningJob)).all()) == 1  # no second interim job
    assert model_service.serving_version(session, "toy").number == interim.number
    req = _get(session, again)
    assert req.status == "scheduled" and req.forgotten_at is not None  # the serving interim clears their row
    assert req.result["interim"]["toy"]["joined"] == first and req.result["interim"]["toy"]["version"] == interim.number
    assert as_utc(req.exact_due_at) == as_utc(req.received_at) + timedelta(days=1)
    # the drain asked to be woken when the exact job is due (the beat tick only backs it up)
    wakes: list[tuple[str, float]] = []
    worker.wake = lambda name, in_s: wakes.append((name, in_s))
    pipeline.drain(worker, "toy")
    wake = schedule_service.wake_in_s(session, "toy", worker.settings)
    assert wake is not None and 0 < wake < 86400
    assert len(wakes) == 1 and wakes[0][0] == "toy" and wake < wakes[0][1] <= wake + 1
    # a drain turned away by another worker's lease arms nothing (the lease holder does)
    import dataclasses

    from workers.lease import acquire_lock, release_lock

    other = dataclasses.replace(worker, owner="other-worker")
    assert acquire_lock(other, "toy")
    assert pipeline.drain(worker, "toy") == [] and len(wakes) == 1
    release_lock(other, "toy")

    # the join is checked, not assumed: were the serving version not built from that interim (rollback
    # refuses to go back past it; here the pointer is moved under it), a new request of the subject
    # would not be covered and gets an interim of its own
    with pytest.raises(Conflict):
        model_service.rollback(session, name="toy", number=interim.parent, actor="test")
    model = session.get(Model, "toy")
    model.serving_version = interim.parent
    session.add(model)
    session.commit()
    third = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    assert len(session.exec(select(UnlearningJob).where(UnlearningJob.phase == "interim")).all()) == 2
    assert "joined" not in _get(session, third).result["interim"]["toy"]

    schedule_service.request_exact_now(session, name="toy", actor="test")
    session.commit()
    pipeline.drain(worker, "toy")
    exact = session.exec(select(UnlearningJob).where(UnlearningJob.phase == "exact")).one()
    assert sorted(exact.request_ids) == sorted([first, again, third])
    assert all(_get(session, r).status == "completed" for r in (first, again, third))
    # the exact job's wall time is recorded for the lead's history
    assert len(schedule_service.recent_exact_s(session.get(Model, "toy"))) == 1


def test_auto_interims_share_one_approximate_budget_per_exact_cycle(session: Session, settings, toy_model,  # noqa: ANN001
                                                                     worker) -> None:
    _schedule(session, exact_within_s=86400, interim="auto")
    model = session.get(Model, "toy")
    model.config = {**model.config, "reference": {**(model.config.get("reference") or {}), "retrain_seconds": 100.0},
                    schedule_service.COSTS_KEY: {"overhead_s": 0.0}}
    session.add(model)
    session.commit()
    assert schedule_service.interim_budget_s(session, model) == pytest.approx(50.0)  # half the 100 s exact job
    _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    first = session.exec(select(UnlearningJob)).one()
    approx = sum(a["seconds"] + a["verify_seconds"] for a in first.attempts if a["method"] != "params")
    assert first.attempts[0]["method"] == "neggrad_plus" and approx > 0
    session.refresh(model)
    left = schedule_service.interim_budget_s(session, model)
    assert left == pytest.approx(max(0.0, 0.5 * schedule_service.expected_exact_s(model) - approx))
    # a cycle whose budget is spent: the next interim clears params only, no approximate attempt
    model.config = {**model.config, "reference": {**model.config["reference"], "retrain_seconds": approx / 2}}
    model.config = {**model.config, schedule_service.COSTS_KEY: {"overhead_s": 0.0}}
    session.add(model)
    session.commit()
    assert schedule_service.interim_budget_s(session, model) == 0.0
    _request(session, settings, "toy-03")
    pipeline.drain(worker, "toy")
    second = session.exec(select(UnlearningJob).order_by(UnlearningJob.started_at.desc())).first()  # type: ignore[attr-defined]
    assert [a["method"] for a in second.attempts] == ["params"] and second.method == "params"
    # an exact job opens a new cycle with the whole budget again
    schedule_service.request_exact_now(session, name="toy", actor="test")
    session.commit()
    pipeline.drain(worker, "toy")
    session.refresh(model)
    assert schedule_service.interim_budget_s(session, model) == pytest.approx(
        0.5 * schedule_service.expected_exact_s(model))


def test_an_auto_interim_skips_a_method_the_budget_left_cannot_pay_for(session: Session, settings, toy_model,  # noqa: ANN001
                                                                       worker) -> None:
    _schedule(session, exact_within_s=86400, interim="auto")
    model = session.get(Model, "toy")
    model.config = {**model.config, "reference": {**(model.config.get("reference") or {}), "retrain_seconds": 1000.0},
                    schedule_service.COSTS_KEY: {"overhead_s": 0.0}}
    session.add(model)
    session.commit()
    assert schedule_service.interim_costs_s(session, model) == {}  # no attempt recorded yet: nothing known
    _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    first = session.exec(select(UnlearningJob)).one()
    tried = [a for a in first.attempts if a["method"] != "params"]
    assert tried and tried[0]["budget_s"] == pytest.approx(500.0, abs=1.0)  # what the cycle's budget gave it
    costs = schedule_service.interim_costs_s(session, model)
    assert costs[tried[0]["method"]] == pytest.approx(tried[0]["seconds"] + tried[0]["verify_seconds"])
    # the budget left is now below what each tried method costs: none of them is started again
    model.config = {**model.config, "reference": {**model.config["reference"],
                                                  "retrain_seconds": 2 * sum(costs.values()) + 0.01}}
    session.add(model)
    session.commit()
    left = schedule_service.interim_budget_s(session, model)
    assert 0 < left < min(costs.values())
    _request(session, settings, "toy-03")
    pipeline.drain(worker, "toy")
    second = session.exec(select(UnlearningJob).order_by(UnlearningJob.started_at.desc())).first()  # type: ignore[attr-defined]
    started = [a["method"] for a in second.attempts if a["method"] != "params"]
    assert not set(started) & set(costs) and second.method in {"params", *started}
    assert [x["method"] for x in second.timings["interim_skipped"]][:len(costs)] == [
        m for m in [a["method"] for a in first.attempts] if m in costs]
    assert all(x["expected_s"] > x["left_s"] for x in second.timings["interim_skipped"])
    # an attempt the budget cut short is no measure of the method's cost
    second.attempts = [*second.attempts, {"method": "cut_short", "seconds": 0.99, "verify_seconds": 0.1,
                                          "budget_s": 1.0, "passed": False},
                       {"method": "ran_through", "seconds": 0.5, "verify_seconds": 0.1, "budget_s": 1.0,
                        "passed": False}]
    session.add(second)
    session.commit()
    costs = schedule_service.interim_costs_s(session, model)
    assert "cut_short" not in costs and costs["ran_through"] == pytest.approx(0.6)


def test_a_scheduled_erasures_percent_only_moves_forward_across_both_steps(session: Session, settings,  # noqa: ANN001
                                                                           toy_model, worker,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from app.services.requests import lifecycle

    _schedule(session, exact_within_s=86400, interim="auto")  # auto: an approximate attempt, then its verification
    seen: list[tuple[str, float]] = []
    real = lifecycle.progress

    def recorded(s, req, *, stage, percent):  # noqa: ANN001, ANN202
        real(s, req, stage=stage, percent=percent)
        seen.append((stage, req.percent))

    monkeypatch.setattr(lifecycle, "progress", recorded)
    rid = _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    interim = list(seen)
    assert interim and all(p <= 50 for _, p in interim) and _get(session, rid).percent == 50.0
    schedule_service.request_exact_now(session, name="toy", actor="test")
    session.commit()
    pipeline.drain(worker, "toy")
    exact = seen[len(interim):]
    assert exact and all(p >= 50 for _, p in exact)
    percents = [p for _, p in seen]
    assert percents == sorted(percents)  # never backwards, across the steps and within each
    assert _get(session, rid).percent == 100.0


def test_a_params_interim_reads_a_random_sample_of_the_retain_rows(session: Session, settings, toy_model,  # noqa: ANN001
                                                                   worker, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from app.data import registry
    from workers.verify.report import Gates

    calls: list[tuple[str, int | None]] = []
    real, real_splits = registry.live, registry.live_splits

    def spy(s, model, splits, exclude, root, samples=None):  # noqa: ANN001, ANN202
        calls.extend((split, (samples or {}).get(split)) for split in splits)
        return real_splits(s, model, splits, exclude, root, samples=samples)

    monkeypatch.setattr(registry, "live_splits", spy)
    _schedule(session, exact_within_s=86400, interim="params")
    _request(session, settings, "toy-02")
    pipeline.drain(worker, "toy")
    # it trains nothing: the verification's retain subsample (max_retain) is drawn from 2x that many rows
    assert sorted(calls) == [("holdout", None), ("test", None), ("train", 2 * Gates().max_retain)]
    model = session.get(Model, "toy")
    full = {(e.subject_id, str(e.features)) for e in real(session, model, "train", set(), Path(settings.data_dir))}
    few = real(session, model, "train", set(), Path(settings.data_dir), sample=5)
    assert len(few) == 5 and {(e.subject_id, str(e.features)) for e in few} <= full and len(full) > 5


def test_the_first_exact_jobs_plan_from_the_calibration_retrains_once_an_overhead_is_observed(  # noqa: ANN001
        session: Session, settings, toy_model) -> None:
    _schedule(session, exact_within_s=3600, interim="params")
    model = session.get(Model, "toy")
    ref = {**(model.config.get("reference") or {}), "retrain_seconds": 27.0, "retrain_seconds_runs": [26.0, 28.0, 27.0]}
    model.config = {**model.config, "reference": ref}
    model.config.pop(schedule_service.COSTS_KEY, None)
    session.add(model)
    session.commit()
    # no job observed yet: no overhead known, so no seeds -- SAFETY x the expected cost, as before
    assert schedule_service.planning_history_s(model) == []
    cold = settings.retry_backoff_s + 2 * 2.0 * 27.0
    model.config = {**model.config, schedule_service.COSTS_KEY: {"overhead_s": 2.0}}
    # an overhead observed (an interim ran): the three calibration retrains, each plus that overhead
    assert schedule_service.planning_history_s(model) == [28.0, 30.0, 29.0]
    seeded = settings.retry_backoff_s + 2 * 1.25 * 30.0
    rid = _request(session, settings, "toy-02")
    req = _get(session, rid)
    req.exact_due_at = req.received_at + timedelta(seconds=3600)
    session.add(req)
    target = session.exec(select(ErasureTarget).where(ErasureTarget.request_id == rid)).one()
    target.status = "scheduled"
    session.add_all([target, model])
    session.commit()
    d = schedule_service.decision(session, model, settings, now=as_utc(req.received_at))
    assert d.run is False
    assert abs((as_utc(req.exact_due_at) - d.wake_at).total_seconds() - seeded) < 1e-6 and seeded < cold
    # recorded exact jobs come after the seeds (the max plans); three of them replace the seeds
    costs = {"overhead_s": 2.0, "exact_recent_s": [40.0]}
    model.config = {**model.config, schedule_service.COSTS_KEY: costs}
    assert schedule_service.planning_history_s(model) == [28.0, 30.0, 29.0, 40.0]
    model.config = {**model.config, schedule_service.COSTS_KEY: {**costs, "exact_recent_s": [20.0, 21.0, 22.0]}}
    assert schedule_service.planning_history_s(model) == [20.0, 21.0, 22.0]
