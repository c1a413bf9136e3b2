"""The erasure request lifecycle: one status enum, one set of transitions (DESIGN.md 4b, issue 8).

Every change of an erasure request's status goes through a transition here. Each writes the
status, its audit event and (through the subscribers) the outbox rows in the caller's
transaction, so they commit or roll back together. Who must hear of a change — the native
callback, the OpenDSR controller, a halted Fides request, the Art. 19 recipients — subscribes
(``app/services/requests/subscribers.py``); nothing here calls them by name, which also keeps the
import graph a tree (intake -> lifecycle, never lifecycle -> fides -> intake).

The promise these transitions keep: ``completed`` and ``no_data`` are reached only when no
version that can serve still carries the subject. A job that fails leaves its requests owed —
queued again with backoff, up to ``max_request_attempts`` attempts, then ``failed`` (visible,
``retry``-able, and reopened by any new request for the same subject).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlmodel import Session, col, select

from app.core.errors import Conflict
from app.db.models import ErasureRequest, ErasureTarget, as_utc, utcnow
from app.services import audit


class RequestStatus(StrEnum):
    AWAITING_IDENTITY = "awaiting_identity"  # Art. 12(6): clock paused, nothing erased yet
    RECEIVED = "received"
    QUEUED = "queued"  # owed: waiting for a job (first time, or after a failed attempt)
    RUNNING = "running"
    VERIFYING = "verifying"
    DEPLOYING = "deploying"
    # Issue 16: the interim version serves on every live replica (forgotten_at), the exact one is
    # owed by exact_due_at. Not erased: no certificate, OpenDSR in_progress, Fides not resumed.
    SCHEDULED = "scheduled"
    COMPLETED = "completed"  # every model that held the subject serves a version free of them
    NO_DATA = "no_data"  # no model held the subject: nothing to unlearn
    FAILED = "failed"  # owed, automatic retries exhausted: needs an operator (retry) or a new request
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # identity not verified: nothing erased


class TargetStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SCHEDULED = "scheduled"  # interim served; waits for the model's exact job (app/ml/schedule.py)
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = RequestStatus
# The subject is still owed an erasure (the deadline runs, the request counts as overdue).
OPEN = frozenset({S.RECEIVED, S.QUEUED, S.RUNNING, S.VERIFYING, S.DEPLOYING, S.SCHEDULED, S.FAILED})
# Lethe says the person is erased: no version that can serve still carries them.
ERASED = frozenset({S.COMPLETED, S.NO_DATA})
# Owed but not in progress: a new request for the subject reopens these.
OWED_IDLE = frozenset({S.FAILED})
IN_JOB = frozenset({S.RUNNING, S.VERIFYING, S.DEPLOYING})
# Nothing more happens to these (a failed request is owed but only reopen moves it).
FINISHED = frozenset({S.COMPLETED, S.NO_DATA, S.CANCELLED, S.REJECTED})
# Job stage -> request status while a job runs.
STAGE_STATUS = {"verifying": S.VERIFYING, "publishing": S.VERIFYING, "deploying": S.DEPLOYING}


@dataclass(frozen=True)
class Transition:
    """What subscribers are told: the request moved from ``previous`` by ``name``."""

    name: str  # admit, start, progress, retry, fail, reopen, complete_model, complete, cancel, reject
    previous: str | None
    context: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[Session, ErasureRequest, Transition], None]
_subscribers: list[Subscriber] = []


def subscribe(fn: Subscriber) -> Subscriber:
    """Register ``fn`` to be called, inside the transaction, on every transition."""
    if fn not in _subscribers:
        _subscribers.append(fn)
    return fn


def _announce(session: Session, req: ErasureRequest, transition: Transition) -> None:
    if not _subscribers:  # a transition nobody hears would drop its callbacks without a trace
        raise RuntimeError("No lifecycle subscribers: call app.services.requests.subscribers.install_subscribers() "
                           "where the process starts.")
    for fn in list(_subscribers):
        fn(session, req, transition)


def _move(session: Session, req: ErasureRequest, status: RequestStatus, name: str, *,
          stage: str | None = None, context: dict[str, Any] | None = None, announce: bool = True) -> None:
    previous = req.status
    req.status = status
    req.stage = stage if stage is not None else status.value
    session.add(req)
    if announce:
        _announce(session, req, Transition(name, previous, context or {}))


# ---------------------------------------------------------------- intake


def admit(session: Session, req: ErasureRequest, models: list[str], *, erased_by: str | None = None) -> None:
    """Status of an admitted request, decided before its INSERT (intake writes each row once):
    queued for the models that hold the subject, else erased at once — ``completed`` when an
    earlier request erased them (``erased_by``), ``no_data`` when no model ever held them."""
    if models:
        req.status, req.stage = S.QUEUED, "queued"
        return
    req.percent, req.completed_at = 100.0, utcnow()
    if erased_by:
        req.status, req.stage = S.COMPLETED, "completed"
        req.result = {"models": {}, "already_erased_by": erased_by,
                      "note": "an earlier request erased this subject; no version that can serve holds them"}
    else:
        req.status, req.stage = S.NO_DATA, "completed"
        req.result = {"models": {}, "note": "no model holds this subject; no model was changed"}


def admitted(session: Session, req: ErasureRequest, models: list[str], *, actor: str, first_event: str) -> None:
    """The audit events and announcements of an admission (``admit`` already set the status)."""
    audit.append(session, type=first_event, actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"source": req.source, "policy": req.policy, "models": models,
                          **({"external_id": req.external_id} if req.external_id else {})})
    if models:
        audit.append(session, type="erasure_queued", actor="lethe", request_id=req.id,
                     subject_key=req.subject_key, payload={"models": models})
    else:
        erased_by = (req.result or {}).get("already_erased_by")
        audit.append(session, type="erasure_completed", actor="lethe", request_id=req.id,
                     subject_key=req.subject_key,
                     payload={"status": str(req.status), **({"already_erased_by": erased_by} if erased_by else {})})
    _announce(session, req, Transition("admit", None, {"models": models}))


def hold_for_identity(req: ErasureRequest, *, now: Any) -> None:
    """Art. 12(6): recorded with the clock paused; nothing is suppressed or erased yet."""
    req.identity_status, req.clock_paused_at = "pending", now
    req.status = req.stage = S.AWAITING_IDENTITY


def awaiting_identity(session: Session, req: ErasureRequest, *, actor: str) -> None:
    audit.append(session, type="erasure_requested", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"source": req.source, "policy": req.policy, "identity": "pending"})
    audit.append(session, type="clock_paused", actor="lethe", request_id=req.id, subject_key=req.subject_key,
                 payload={"reason": "identity verification pending (Art. 12(6))"})
    _announce(session, req, Transition("admit", None, {"identity": "pending"}))


def reject(session: Session, req: ErasureRequest, *, error: str) -> None:
    req.completed_at, req.error = utcnow(), error
    _move(session, req, S.REJECTED, "reject")


# ---------------------------------------------------------------- jobs


def start(session: Session, req: ErasureRequest, *, job_id: str) -> None:
    req.percent = req.percent or 0.0  # a scheduled erasure's exact job starts where its interim ended
    _move(session, req, S.RUNNING, "start", stage="collecting", context={"job_id": job_id})


def progress(session: Session, req: ErasureRequest, *, stage: str, percent: float) -> None:
    """A job's stage and percent; announced only when the status itself changes. The percent never
    goes back (an escalation from an approximate method to a retrain starts ``unlearning`` again, a
    retried job its stages): ``lethe erase --follow`` and the console show progress, not the stage."""
    if req.status not in IN_JOB:
        return
    status = STAGE_STATUS.get(stage, S.RUNNING)
    req.percent = max(req.percent or 0.0, percent)
    _move(session, req, status, "progress", stage=stage, announce=req.status != status)


def attempt_failed(session: Session, req: ErasureRequest, targets: list[ErasureTarget], *, job_id: str,
                   error: str, max_attempts: int, backoff_s: float, actor: str) -> bool:
    """A job failed for ``targets`` (this request's, of one model). The request stays owed: the
    targets are queued again after a backoff, or — after ``max_attempts`` — the request fails
    visibly. Returns whether a retry is scheduled."""
    now = utcnow()
    attempts = max((t.attempts for t in targets), default=0)
    retry = attempts < max_attempts
    for t in targets:
        if retry:
            t.status, t.job_id = TargetStatus.QUEUED, None
            t.not_before = now + timedelta(seconds=backoff_s * 2 ** max(attempts - 1, 0))
        else:
            t.status = TargetStatus.FAILED
        session.add(t)
    req.error = error
    if retry:
        not_before = max(as_utc(t.not_before) for t in targets)
        audit.append(session, type="erasure_retry_scheduled", actor=actor, request_id=req.id,
                     subject_key=req.subject_key,
                     payload={"job_id": job_id, "error": error, "attempt": attempts, "max_attempts": max_attempts,
                              "not_before": not_before.isoformat()})
        _move(session, req, S.QUEUED, "retry", stage="retry_scheduled",
              context={"attempt": attempts, "not_before": not_before.isoformat()})
    else:
        audit.append(session, type="erasure_failed", actor=actor, request_id=req.id, subject_key=req.subject_key,
                     payload={"job_id": job_id, "error": error, "attempts": attempts})
        _move(session, req, S.FAILED, "fail", context={"attempts": attempts})
    return retry


def interim_served(session: Session, req: ErasureRequest, targets: list[ErasureTarget], *, model_name: str,
                   detail: dict[str, Any], exact_due_at: Any, actor: str) -> None:
    """The interim step of ``model_name`` serves on every live replica (or, with ``interim: none``,
    the samples are excluded and nothing was published): ``targets`` wait for the model's exact
    job. The request is ``scheduled`` once no target is still queued or running; ``forgotten_at``
    is set when an interim version served, ``exact_due_at`` is the earliest over its models."""
    for t in targets:
        t.status, t.job_id = TargetStatus.SCHEDULED, None
        session.add(t)
    now = utcnow()
    result = dict(req.result or {})
    result.setdefault("interim", {})[model_name] = detail
    req.result = result
    req.exact_due_at = min(x for x in (as_utc(req.exact_due_at), as_utc(exact_due_at)) if x is not None)
    audit.append(session, type="interim_served" if detail.get("version") else "erasure_scheduled", actor=actor,
                 request_id=req.id, subject_key=req.subject_key,
                 payload={"model": model_name, "version": detail.get("version"), "method": detail.get("method"),
                          "exact_due_at": as_utc(req.exact_due_at).isoformat()})
    all_targets = session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all()
    if any(t.status in (TargetStatus.QUEUED, TargetStatus.RUNNING) for t in all_targets):
        session.add(req)
        return
    if detail.get("version") and req.forgotten_at is None:
        req.forgotten_at = now
        req.result = {**req.result, "time_to_interim_s": round((now - as_utc(req.received_at)).total_seconds(), 3)}
    req.percent = 50.0
    _move(session, req, S.SCHEDULED, "schedule", context={"exact_due_at": as_utc(req.exact_due_at).isoformat()})


def reopen(session: Session, req: ErasureRequest, *, actor: str, reason: str) -> list[str]:
    """Owed again: a ``failed`` request's failed targets are queued with fresh attempts.
    Returns the models to enqueue (after the commit)."""
    if req.status not in OWED_IDLE:
        raise Conflict(f"Request is {req.status}; only a failed request can be retried.", code="not_retryable")
    targets = list(session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id,
                                                            ErasureTarget.status == TargetStatus.FAILED)).all())
    now = utcnow()
    for t in targets:
        t.status, t.job_id, t.attempts, t.not_before, t.queued_at = TargetStatus.QUEUED, None, 0, None, now
        session.add(t)
    req.error, req.percent = None, 0.0
    audit.append(session, type="erasure_reopened", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"reason": reason, "models": sorted(t.model_name for t in targets)})
    _move(session, req, S.QUEUED, "reopen", context={"reason": reason})
    return sorted({t.model_name for t in targets})


def reopen_owed(session: Session, subject_keys: list[str], *, actor: str, reason: str) -> list[str]:
    """Reopen every failed request of these subjects (a new request for them joins the owed
    erasure instead of leaving it failed). Returns the models to enqueue."""
    if not subject_keys:
        return []
    models: set[str] = set()
    for req in session.exec(select(ErasureRequest).where(col(ErasureRequest.subject_key).in_(sorted(subject_keys)),
                                                         col(ErasureRequest.status).in_(sorted(OWED_IDLE)))).all():
        models |= set(reopen(session, req, actor=actor, reason=reason))
    return sorted(models)


def complete_model(session: Session, req: ErasureRequest, *, model_name: str, detail: dict[str, Any],
                   actor: str, completed_at: Any = None) -> None:
    """This request's erasure from one model is done (its targets already marked); the request
    completes when every target is done or cancelled."""
    result = dict(req.result or {})
    result.setdefault("models", {})[model_name] = detail
    req.result = result
    session.add(req)
    _announce(session, req, Transition("complete_model", req.status,
                                       {"model": model_name, **detail, "completed_at": completed_at or utcnow()}))
    targets = session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all()
    if req.status == S.FAILED or not all(t.status in (TargetStatus.DONE, TargetStatus.CANCELLED) for t in targets):
        return  # another model still owes its part (a failed one waits for retry / reopen)
    if _held(req):
        return  # e.g. a required model registry still owes the clean version: ``release`` completes it
    _complete(session, req, detail=detail, actor=actor)


Hold = Callable[[ErasureRequest], str | None]
_holds: list[Hold] = []


def hold_completion(fn: Hold) -> Hold:
    """Register ``fn``: a reason (a stage name) it returns keeps a request whose models are all done
    from ``completed`` (issue 19: a model registry marked ``required`` without the clean version yet)."""
    if fn not in _holds:
        _holds.append(fn)
    return fn


def _held(req: ErasureRequest) -> bool:
    reason = next((r for fn in list(_holds) if (r := fn(req))), None)
    if reason:
        req.stage = reason
    return reason is not None


def release(session: Session, req: ErasureRequest, *, actor: str) -> bool:
    """Complete a request that a hold kept back, once nothing holds it; returns whether it completed."""
    if req.status in FINISHED or req.status == S.FAILED:
        return False
    targets = session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all()
    if not targets or not all(t.status in (TargetStatus.DONE, TargetStatus.CANCELLED) for t in targets) or _held(req):
        return False
    models = (req.result or {}).get("models") or {}
    _complete(session, req, detail=models[sorted(models)[-1]] if models else {}, actor=actor)
    return True


def _complete(session: Session, req: ErasureRequest, *, detail: dict[str, Any], actor: str) -> None:
    now = utcnow()
    result = dict(req.result or {})  # as the subscribers left it
    req.percent, req.completed_at, req.error = 100.0, now, None
    req.result = {**result, "time_to_forget_s": round((now - as_utc(req.received_at)).total_seconds(), 3)}
    audit.append(session, type="erasure_completed", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"models": sorted(result["models"]), "version_after": detail.get("version_after"),
                          "method": detail.get("method")})
    _move(session, req, S.COMPLETED, "complete")


def cancel(session: Session, req: ErasureRequest, targets: list[ErasureTarget], *, actor: str) -> None:
    if req.status not in (S.QUEUED, S.AWAITING_IDENTITY) or req.stage == "retry_scheduled" \
            or any(t.status != TargetStatus.QUEUED for t in targets):
        raise Conflict(f"Request is {req.status}; only a queued request (or one awaiting identity verification) "
                       "can be cancelled.", code="not_cancellable")
    req.clock_paused_at = None
    for t in targets:
        t.status = TargetStatus.CANCELLED
        session.add(t)
    audit.append(session, type="erasure_cancelled", actor=actor, request_id=req.id, subject_key=req.subject_key)
    _move(session, req, S.CANCELLED, "cancel")
