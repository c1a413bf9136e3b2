"""The erasure scheduler over the registry (issue 16): which job a model runs next, when its exact
job wakes, which requests are at risk. The decisions themselves are ``app/ml/schedule.py`` (pure,
also driven by ``bench/schedule.py`` with a fake clock); this module only reads rows for them.

Per model with a deferred schedule (``exact_within_s > 0``) a target goes
``queued -> (interim job) -> scheduled -> (exact job) -> done``. A target still ``queued`` whose
request already has an ``exact_due_at`` had its interim and is owed only the exact job (a failed
exact attempt queues it again with backoff): it never gets a second interim.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from app.core.config import Settings
from app.db.models import ErasureRequest, ErasureTarget, FidesResume, Model, UnlearningJob, as_utc, utcnow
from app.ml import policy
from app.ml import schedule as sch
from app.services import audit
from app.services.integrations import fides_state
from app.services.models import jobs
from app.services.requests import lifecycle
from app.services.models import catalog as model_service
from app.services.models.jobs import due_targets
from app.services.requests.lifecycle import OPEN, TargetStatus

OPERATOR_KEY = "exact_requested_at"  # Model.config: an operator's exact-now, cleared by the exact job


COSTS_KEY = "job_costs"  # Model.config: {"overhead_s", "exact_total_s", "exact_recent_s"} observed by completed jobs


def expected_exact_s(model: Model) -> float | None:
    """The model's expected exact job, wall clock: the measured retrain (at calibration, refreshed by
    each exact job) plus a job's observed fixed overhead (collect, publish, deploy to every replica),
    or the last exact job's whole duration if that is longer. A retrain alone undercounts: on the
    demo model under load the 3 s retrain is a 20 s job."""
    retrain = (model.config.get("reference") or {}).get("retrain_seconds")
    costs = model.config.get(COSTS_KEY) or {}
    candidates = [x for x in ((retrain or 0.0) + costs.get("overhead_s", 0.0) if retrain else None,
                              costs.get("exact_total_s")) if x]
    return max(candidates) if candidates else None


def observe_job(session: Session, job: Any) -> None:
    """Fold a completed job's wall time into the model's expected exact cost (biased upward: a
    slower job raises the estimate at once, a faster one lowers it slowly)."""
    total, spent = (job.timings or {}).get("total_s"), job.compute_s or 0.0
    if total is None:
        return
    model = session.get(Model, job.model_name)
    costs = dict(model.config.get(COSTS_KEY) or {})

    def fold(old: float | None, new: float) -> float:
        return round(new if old is None else max(new, 0.7 * old + 0.3 * new), 3)

    costs["overhead_s"] = fold(costs.get("overhead_s"), max(total - spent, 0.0))
    if job.phase == "exact":
        costs["exact_total_s"] = fold(costs.get("exact_total_s"), total)
        # the wall times themselves, newest last: the lead plans one attempt from their worst
        costs["exact_recent_s"] = [*(costs.get("exact_recent_s") or []), round(total, 3)][-sch.RECENT_EXACT:]
    model.config = {**model.config, COSTS_KEY: costs}
    session.add(model)


def recent_exact_s(model: Model) -> list[float]:
    """Wall times of the model's last ``sch.RECENT_EXACT`` completed exact jobs (collect to deploy)."""
    return list((model.config.get(COSTS_KEY) or {}).get("exact_recent_s") or [])


def planning_history_s(model: Model) -> list[float]:
    """The wall times the lead plans one exact attempt from (``sch.attempt_s``), newest last: the
    model's recorded exact jobs, and -- while fewer than ``sch.MIN_HISTORY`` are recorded -- before
    them the calibration's own retrains on this device (``reference["retrain_seconds_runs"]``,
    three at registration), each plus the job overhead observed so far (collect, verify, publish,
    deploy; every completed job, interims included, folds it in). Without them a model's first
    exact jobs plan on ``SAFETY`` x a mean and then the wider few-jobs factor: on the compressed run
    (movielens-30s, a 27 s retrain, exact_within_s 300) that cold lead was 117 s instead of 81 s and
    bought a fourth retrain in ten minutes. The seeds wait for an observed overhead: a model's
    first job of any kind plans as before (on the demo model under load the overhead, not the 3 s
    retrain, is most of a 20 s job)."""
    real = recent_exact_s(model)
    costs = model.config.get(COSTS_KEY) or {}
    runs = (model.config.get("reference") or {}).get("retrain_seconds_runs") or []
    if len(real) >= sch.MIN_HISTORY or costs.get("overhead_s") is None or not runs:
        return real
    overhead = float(costs["overhead_s"])
    return [*(round(float(r) + overhead, 3) for r in runs if r and float(r) > 0), *real][-sch.RECENT_EXACT:]


def interim_budget_s(session: Session, model: Model) -> float:
    """Seconds the model's next ``interim: auto`` job may spend on approximate methods: one exact
    cycle's interims share ``approx_budget_share`` x the expected exact job (the rule ``auto`` follows
    for a single erasure, ``policy.Escalation``), less what the cycle's interims since the last exact
    job already spent on approximate attempts. Past it, interims are ``params``: an approximate
    attempt per interim (~12 s on movielens-30s, one per request cluster) would cost more than the
    retrains the schedule saves. No recorded exact cost: unbounded (``inf``), as ``policy.plan``'s
    ``no_cost_data`` rule runs the chain."""
    if (expected := expected_exact_s(model)) is None:
        return math.inf
    share = policy.DEFAULT_ESCALATION.get(model.spec, policy.FALLBACK_ESCALATION).approx_budget_share
    last_exact = session.exec(select(UnlearningJob.started_at).where(
        UnlearningJob.model_name == model.name, UnlearningJob.phase == "exact",
        UnlearningJob.status == "completed").order_by(col(UnlearningJob.started_at).desc())).first()
    q = select(UnlearningJob.attempts).where(UnlearningJob.model_name == model.name, UnlearningJob.phase == "interim")
    if last_exact is not None:
        q = q.where(col(UnlearningJob.started_at) > last_exact)
    spent = sum(float(a.get("seconds") or 0) + float(a.get("verify_seconds") or 0)
                for attempts in session.exec(q).all() for a in attempts or [] if a.get("method") != "params")
    return max(0.0, share * expected - spent)


INTERIM_COST_HISTORY = 3  # full interim attempts per method the expected cost is the median of


def interim_costs_s(session: Session, model: Model) -> dict[str, float]:
    """Per approximate method, what one interim attempt of it costs on this model (run and
    verification): the median of its last ``INTERIM_COST_HISTORY`` attempts that ran to the end.
    An attempt the budget cut short (``budget_s`` recorded, and it used nearly all of it) is not
    counted: it is only a lower bound. ``interim.interim_forget`` starts no attempt whose expected
    cost exceeds what is left of the cycle's budget: on the compressed run, finetune attempts cut to
    1-3 s by the remaining budget then failed their gates, compute spent for nothing."""
    seen: dict[str, list[float]] = {}
    rows = session.exec(select(UnlearningJob.attempts).where(
        UnlearningJob.model_name == model.name, UnlearningJob.phase == "interim")
        .order_by(col(UnlearningJob.started_at).desc()).limit(50)).all()
    for attempts in rows:
        for a in attempts or []:
            name = a.get("method")
            if name in (None, "params") or len(seen.get(name, [])) >= INTERIM_COST_HISTORY:
                continue
            cost = float(a.get("seconds") or 0) + float(a.get("verify_seconds") or 0)
            given = a.get("budget_s")
            if given is not None and float(a.get("seconds") or 0) >= 0.95 * float(given):
                continue  # cut short by the budget
            seen.setdefault(name, []).append(cost)
    return {name: sorted(costs)[len(costs) // 2] for name, costs in seen.items()}


def schedule_of(model: Model) -> sch.Schedule:
    """The model's schedule; the default is derived from the measured retrain alone (as
    ``GET .../policy`` shows it), never from job wall times that a loaded machine inflates."""
    return sch.parse(model.config.get("schedule"), (model.config.get("reference") or {}).get("retrain_seconds"))[0]


def exact_method(model: Model) -> str:
    """The exact method an exact-phase job runs: the last exact one of the model's effective chain."""
    chain = policy.effective(model.spec, model.config)["chain"]
    return next((m for m in reversed(chain) if policy.METHODS.get(m)), "retrain")


def token_expiry(session: Session, request_id: str) -> datetime | None:
    """When the reply-to-token of a halted Fides request for this erasure dies (the earliest owed one):
    the expiry stored when Fides last halted it, which a re-halt with a fresh token moves."""
    stored = session.exec(select(FidesResume.token_expires_at).where(
        FidesResume.request_id == request_id, col(FidesResume.state).in_(fides_state.OWING),
        col(FidesResume.token_expires_at).is_not(None))).all()
    return min((as_utc(t) for t in stored), default=None)


def exact_due_for(session: Session, req: ErasureRequest, model: Model, settings: Settings) -> datetime:
    margin = sch.margin_s(expected_exact_s(model), attempts=settings.max_request_attempts,
                          backoff_s=settings.retry_backoff_s)
    return sch.exact_due_at(received_at=as_utc(req.received_at), due_at=as_utc(req.due_at),
                            schedule=schedule_of(model), margin=margin,
                            token_expires_at=token_expiry(session, req.id))


def _due(q: Any, now: datetime) -> Any:
    return q.where(col(ErasureTarget.not_before).is_(None) | (col(ErasureTarget.not_before) <= now))


def interim_query(model_name: str, now: datetime) -> Any:
    """Queued, due targets that have not had their interim step (their request has no exact_due_at)."""
    return _due(select(ErasureTarget).join(ErasureRequest, col(ErasureRequest.id) == col(ErasureTarget.request_id))
                .where(ErasureTarget.model_name == model_name, ErasureTarget.status == TargetStatus.QUEUED,
                       col(ErasureRequest.exact_due_at).is_(None)), now)


def exact_rows(session: Session, model_name: str) -> list[tuple[ErasureTarget, ErasureRequest]]:
    """Targets owed only the exact job: scheduled, or queued again after a failed exact attempt."""
    return list(session.exec(select(ErasureTarget, ErasureRequest).join(
        ErasureRequest, col(ErasureRequest.id) == col(ErasureTarget.request_id)).where(
        ErasureTarget.model_name == model_name,
        (ErasureTarget.status == TargetStatus.SCHEDULED) | (
            (ErasureTarget.status == TargetStatus.QUEUED) & col(ErasureRequest.exact_due_at).is_not(None)))).all())


def decision(session: Session, model: Model, settings: Settings, *, now: datetime | None = None) -> sch.Decision:
    """Whether the model's exact job for every owed subject starts now (a retry past its backoff does)."""
    now = now or utcnow()
    rows = exact_rows(session, model.name)
    retry_due = any(t.status == TargetStatus.QUEUED and (t.not_before is None or as_utc(t.not_before) <= now)
                    for t, _ in rows)
    d = sch.decide(now=now, owed=[sch.Owed(r.id, as_utc(r.exact_due_at)) for _, r in rows],
                   schedule=schedule_of(model), expected_exact_s=expected_exact_s(model),
                   recent_s=planning_history_s(model), backoff_s=settings.retry_backoff_s,
                   operator_asked=bool(model.config.get(OPERATOR_KEY)))
    if retry_due and not d.run:
        return sch.Decision(True, "retry", now, d.owed)
    return d


def wake_in_s(session: Session, model_name: str, settings: Settings) -> float | None:
    """Seconds until the model's exact job should start (0: now), or None when nothing is owed or the
    model is not deferred: the worker sends itself a message due then, the beat tick is the backstop."""
    model = session.get(Model, model_name)
    if model is None or not schedule_of(model).deferred:
        return None
    now = utcnow()
    d = decision(session, model, settings, now=now)
    if d.wake_at is None:
        return None
    return max(0.0, (d.wake_at - now).total_seconds())


def _descends_from(session: Session, model_name: str, serving: int | None, ancestor: int) -> bool:
    """Whether version ``serving`` is ``ancestor`` or was built from it (parent links; a rollback to
    an older branch is not a descendant)."""
    number = serving
    while number is not None and number > ancestor:
        number = model_service.get_version(session, model_name, number).parent
    return number == ancestor


def join_owed(session: Session, model_name: str, settings: Settings) -> int:
    """New requests for a subject whom the model already owes an exact job (an earlier request of the
    same subject is ``scheduled`` on it) join that owed set at once, without an interim job of their
    own: the subject's samples are already out of every training run (an open request excludes them)
    and, when that request's interim version or a version built from it serves, their own parameters
    are already cleared there, so ``forgotten_at`` is now and true. Returns how many targets joined."""
    model = model_service.get_model(session, model_name)
    if not schedule_of(model).deferred:
        return 0
    joined = 0
    for target in session.exec(interim_query(model_name, utcnow())).all():
        req = session.get(ErasureRequest, target.request_id)
        earlier = session.exec(select(ErasureRequest).join(
            ErasureTarget, col(ErasureTarget.request_id) == col(ErasureRequest.id)).where(
            ErasureRequest.subject_key == req.subject_key, ErasureRequest.id != req.id,
            ErasureTarget.model_name == model_name, ErasureTarget.status == TargetStatus.SCHEDULED)
            .order_by(col(ErasureRequest.received_at))).first()
        detail = ((earlier.result or {}).get("interim") or {}).get(model_name) if earlier is not None else None
        if detail is None:
            continue
        version = detail.get("version")
        if version is not None and not _descends_from(session, model_name, model.serving_version, version):
            continue  # the serving version may carry the subject's parameters again: a fresh interim
        lifecycle.interim_served(session, req, [target], model_name=model_name,
                                 detail={**detail, "joined": earlier.id},
                                 exact_due_at=exact_due_for(session, req, model, settings), actor=jobs.ACTOR)
        joined += 1
    return joined


def interims_on(session: Session, model_name: str, since: int) -> tuple[int, list[str]]:
    """``(serving version, request ids)`` when every version the model published after ``since`` on
    its serving line is an interim (``metrics.interim``; ``pipeline.InterimsAlongside`` ran them while
    an exact job trained): the exact job publishes on top of the last and keeps their subjects'
    parameters cleared. Anything else -- another job's version, a rollback -- gives ``(since, [])``
    and the exact job's fence refuses as before."""
    model = model_service.get_model(session, model_name)
    number, ids = model.serving_version, []
    while number is not None and number != since:
        version = model_service.get_version(session, model_name, number)
        if not (version.metrics or {}).get("interim") or version.parent is None:
            return since, []
        job = session.exec(select(UnlearningJob).where(UnlearningJob.model_name == model_name,
                                                       UnlearningJob.phase == "interim",
                                                       UnlearningJob.version_after == number)).first()
        ids.extend(job.request_ids if job is not None else [])
        number = version.parent
    return (model.serving_version, sorted(set(ids))) if number == since else (since, [])


def next_phase(session: Session, model_name: str, settings: Settings) -> str | None:
    """``interim`` or ``exact`` (what the model's next job does), or None: nothing to run now."""
    model = model_service.get_model(session, model_name)
    now = utcnow()
    if not schedule_of(model).deferred:
        return "exact" if session.exec(due_targets(model_name)).first() is not None else None
    if session.exec(interim_query(model_name, now)).first() is not None:
        return "interim"
    return "exact" if decision(session, model, settings, now=now).run else None


def take(session: Session, model_name: str, phase: str, *, limit: int, lock: bool = False) -> list[ErasureTarget]:
    """The targets a job of ``phase`` takes: due queued ones (today's path and interims, ``limit``
    at a time); for a deferred model's exact job every owed one at once. ``lock`` (PostgreSQL):
    skip rows another transaction holds."""
    model = model_service.get_model(session, model_name)
    if not schedule_of(model).deferred or phase == "interim":
        q = due_targets(model_name) if not schedule_of(model).deferred else interim_query(model_name, utcnow())
        q = q.order_by(col(ErasureTarget.queued_at)).limit(limit)
        if lock:
            q = q.with_for_update(skip_locked=True, of=ErasureTarget)
        return list(session.exec(q).all())
    return [t for t, _ in exact_rows(session, model_name)]


def request_exact_now(session: Session, *, name: str, actor: str) -> dict[str, Any]:
    """An operator asks for the exact job now; it runs at once for every owed subject of the model."""
    model = model_service.get_model(session, name)
    owed = len(exact_rows(session, name))
    model.config = {**model.config, OPERATOR_KEY: utcnow().isoformat()}
    session.add(model)
    audit.append(session, type="exact_requested", actor=actor, payload={"model": name, "owed": owed})
    return {"model": name, "owed": owed}


def clear_operator_request(session: Session, model: Model) -> None:
    if OPERATOR_KEY in model.config:
        model.config = {k: v for k, v in model.config.items() if k != OPERATOR_KEY}
        session.add(model)


def models_to_wake(session: Session, settings: Settings) -> list[str]:
    """Models whose exact job should start now (the beat tick enqueues them)."""
    names = sorted(set(session.exec(select(ErasureTarget.model_name).where(
        col(ErasureTarget.status).in_((TargetStatus.SCHEDULED, TargetStatus.QUEUED)))).all()))
    wake = []
    for name in names:
        model = session.get(Model, name)
        if model is not None and schedule_of(model).deferred and decision(session, model, settings).run:
            wake.append(name)
    return wake


def at_risk_by_model(session: Session, *, now: datetime | None = None) -> dict[str, int]:
    return {name: len(ids) for name, ids in _at_risk(session, now or utcnow()).items()}


def at_risk_ids(session: Session, *, now: datetime | None = None) -> list[str]:
    """Open requests of any model that ``_at_risk`` finds."""
    return sorted({rid for ids in _at_risk(session, now or utcnow()).values() for rid in ids})


def _at_risk(session: Session, now: datetime) -> dict[str, set[str]]:
    """Per model, open requests whose exact erasure, one planned attempt (``sch.attempt_s``) started now, would end
    after ``exact_due_at`` (or that are past it): visible before they are late."""
    rows = session.exec(select(ErasureRequest.id, ErasureRequest.exact_due_at, ErasureTarget.model_name).join(
        ErasureTarget, col(ErasureTarget.request_id) == col(ErasureRequest.id)).where(
        col(ErasureRequest.exact_due_at).is_not(None), col(ErasureRequest.status).in_(sorted(OPEN)),
        col(ErasureTarget.status).in_((TargetStatus.SCHEDULED, TargetStatus.QUEUED, TargetStatus.RUNNING,
                                       TargetStatus.FAILED)))).all()
    cost: dict[str, tuple[float | None, list[float]]] = {}
    out: dict[str, set[str]] = {}
    for rid, due, name in rows:
        if name not in cost:
            model = session.get(Model, name)
            cost[name] = (expected_exact_s(model), planning_history_s(model)) if model else (None, [])
        if sch.at_risk(now=now, exact_due=as_utc(due), expected_exact_s=cost[name][0], recent_s=cost[name][1]):
            out.setdefault(name, set()).add(rid)
    return out


def complete_interim(session: Session, job: Any, settings: Settings, *, deploy_s: float) -> None:
    """The interim version serves on every live replica (or ``interim: none`` published nothing):
    the batch's requests are ``scheduled`` with their ``exact_due_at``; nothing is purged (the
    samples stay flagged deleted until the exact version completes the erasure)."""
    model = model_service.get_model(session, job.model_name)
    now = utcnow()
    job.status, job.stage, job.finished_at = "completed", "completed", now
    job.timings = {**job.timings, "deploy_s": round(deploy_s, 3),
                   "total_s": round((now - as_utc(job.started_at)).total_seconds(), 3)}
    session.add(job)
    targets = jobs.targets_of(session, job)
    report = (job.attempts[-1].get("report") if job.attempts else None) or {}
    detail = {"job_id": job.id, "version": job.version_after if job.method not in (None, "none") else None,
              "method": job.method, "version_before": job.version_before, "free_of_subject": False,
              "verification": {k: report.get(k) for k in (
                  "passed", "mia_test", "mia_auc", "mia_margin", "reference_auc", "forget_acc", "holdout_acc",
                  "retain_acc", "test_acc", "reference_acc", "subject_params_cleared", "gates", "disclaimer")
                  if k in report},
              "note": "an interim version: the subject's own parameters are cleared and their samples excluded, "
                      "but shared parameters may still carry their influence until the exact version serves"}
    for req in jobs.requests_of(session, job):
        if req.status in lifecycle.FINISHED:
            continue
        mine = [t for t in targets if t.request_id == req.id]
        lifecycle.interim_served(session, req, mine, model_name=job.model_name, detail=detail,
                                 exact_due_at=exact_due_for(session, req, model, settings), actor=jobs.ACTOR)
    observe_job(session, job)
