"""Erasure intake and status (plain functions; the caller commits, then enqueues).

Intake, in one transaction: the request row, a suppression entry (nothing of this subject
may be ingested from now on), one target per model that holds the subject's samples, and
the audit events. A subject with no data completes at once as ``no_data``.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.core.errors import Conflict, NotFound
from app.db.models import ErasureRequest, ErasureTarget, Sample, Suppression, as_utc, utcnow
from app.services import audit, notify

OPEN_STATUSES = ("received", "queued", "running", "verifying", "deploying")


def add_months(dt: datetime, months: int = 1) -> datetime:
    """GDPR Art. 12(3): to the same date ``months`` later (clamped to that month's last day)."""
    index = dt.month - 1 + months
    year, month = dt.year + index // 12, index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day)


def add_one_month(dt: datetime) -> datetime:
    return add_months(dt, 1)


def extend_deadline(session: Session, *, request_id: str, reason: str, actor: str) -> ErasureRequest:
    """Art. 12(3): extend by two further months, once, with reasons, inside the first month.

    The controller must tell the data subject within the first month, giving the reasons; the
    reason is kept on the request and in the audit log (as given: write it without personal data).
    """
    req = get_request(session, request_id=request_id)
    if req.status not in OPEN_STATUSES:
        raise Conflict(f"Request is {req.status}; only an open request can be extended.", code="not_extendable")
    if req.extended_at is not None:
        raise Conflict("The deadline was already extended; Art. 12(3) allows one extension.",
                       code="already_extended")
    now = utcnow()
    if now >= add_one_month(as_utc(req.received_at)):
        raise Conflict("An extension must be notified within one month of receipt.", code="extension_too_late")
    req.due_at = add_months(as_utc(req.received_at), 3)
    req.extended_at, req.extension_reason = now, reason
    session.add(req)
    audit.append(session, type="deadline_extended", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"due_at": req.due_at.isoformat(), "reason": reason})
    return req


def suppress(session: Session, *, subject_key: str, request_id: str | None) -> None:
    """Add the subject's suppression entry unless one exists (the first erasure's stays): one
    statement, no read first, safe against a concurrent erasure of the same subject."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(Suppression).values(subject_key=subject_key, request_id=request_id, created_at=utcnow())
                    .on_conflict_do_nothing(index_elements=["subject_key"]))


def _replay(session: Session, idempotency_key: str, subject_key: str) -> ErasureRequest | None:
    existing = session.exec(select(ErasureRequest).where(ErasureRequest.idempotency_key == idempotency_key)).first()
    if existing is not None and existing.subject_key != subject_key:
        raise Conflict("This Idempotency-Key was already used for a different request.", code="idempotency_key_reused")
    return existing


def create_request(session: Session, *, subject_key: str, reason: str | None = None,
                   callback_url: str | None = None, policy: str = "auto", idempotency_key: str | None = None,
                   api_key_id: str | None = None, source: str = "api", external_id: str | None = None,
                   actor: str = "api", identity_verified: bool = True) -> tuple[ErasureRequest, bool]:
    """Record an erasure request. Returns (request, created); created is False on an idempotent replay.

    ``identity_verified=False`` (Art. 12(6)): the request is recorded and its clock paused;
    nothing is suppressed or erased until :func:`decide_identity` confirms the subject.
    """
    if idempotency_key and (existing := _replay(session, idempotency_key, subject_key)):
        return existing, False
    now = utcnow()
    req = ErasureRequest(subject_key=subject_key, source=source, external_id=external_id,
                         idempotency_key=idempotency_key, api_key_id=api_key_id, reason=reason, policy=policy,
                         received_at=now, due_at=add_one_month(now), callback_url=callback_url)
    # Decide the outcome before the first INSERT, so intake is one row write (no UPDATE after it).
    models = _models_holding(session, subject_key) if identity_verified else []
    if identity_verified:
        _set_admitted(req, models)
    else:
        req.identity_status, req.clock_paused_at = "pending", now
        req.status = req.stage = "awaiting_identity"
    if idempotency_key:
        try:
            with session.begin_nested():  # a concurrent request with the same key may win the insert
                session.add(req)
                session.flush()
        except IntegrityError:
            if existing := _replay(session, idempotency_key, subject_key):
                return existing, False
            raise
    else:
        session.add(req)
    if not identity_verified:
        audit.append(session, type="erasure_requested", actor=actor, request_id=req.id, subject_key=subject_key,
                     payload={"source": source, "policy": policy, "identity": "pending"})
        audit.append(session, type="clock_paused", actor="lethe", request_id=req.id, subject_key=subject_key,
                     payload={"reason": "identity verification pending (Art. 12(6))"})
        session.flush()
        notify.status_changed(session, req)
        return req, True
    _record_admission(session, req, models, actor=actor, first_event="erasure_requested")
    return req, True


def _models_holding(session: Session, subject_key: str) -> list[str]:
    return sorted(session.exec(select(Sample.model_name).where(Sample.subject_key == subject_key,
                                                               col(Sample.deleted).is_(False)).distinct()).all())


def _set_admitted(req: ErasureRequest, models: list[str]) -> None:
    """Status of an admitted request: queued for its models, or at once ``no_data``."""
    if models:
        req.status, req.stage = "queued", "queued"
    else:
        req.status, req.stage, req.percent, req.completed_at = "no_data", "completed", 100.0, utcnow()
        req.result = {"models": {}, "note": "no samples of this subject are held; no model was changed"}


def _record_admission(session: Session, req: ErasureRequest, models: list[str], *, actor: str,
                      first_event: str) -> None:
    """Suppress the subject, fan out one target per model holding their data, audit, notify."""
    subject_key = req.subject_key
    suppress(session, subject_key=subject_key, request_id=req.id)
    audit.append(session, type=first_event, actor=actor, request_id=req.id, subject_key=subject_key,
                 payload={"source": req.source, "policy": req.policy, "models": models})
    if not models:
        audit.append(session, type="erasure_completed", actor="lethe", request_id=req.id,
                     subject_key=subject_key, payload={"status": "no_data"})
    else:
        for name in models:
            session.add(ErasureTarget(request_id=req.id, model_name=name))
        audit.append(session, type="erasure_queued", actor="lethe", request_id=req.id,
                     subject_key=subject_key, payload={"models": models})
    session.flush()
    notify.status_changed(session, req)


def decide_identity(session: Session, *, request_id: str, verified: bool, note: str | None,
                    actor: str) -> ErasureRequest:
    """End an identity check (Art. 12(6)): resume the clock and admit the request, or reject it.

    Resuming adds the paused time to ``due_at``. A rejected request erases nothing; the subject
    may ask again. The caller commits, then enqueues ``models_to_enqueue``.
    """
    req = get_request(session, request_id=request_id)
    if req.status != "awaiting_identity":
        raise Conflict(f"Request is {req.status}; only a request awaiting identity verification can be decided.",
                       code="not_awaiting_identity")
    now = utcnow()
    paused = (now - as_utc(req.clock_paused_at)).total_seconds() if req.clock_paused_at else 0.0
    req.clock_paused_s += paused
    req.clock_paused_at = None
    req.due_at = as_utc(req.due_at) + timedelta(seconds=paused)
    if not verified:
        req.identity_status = "rejected"
        req.status = req.stage = "rejected"
        req.completed_at = now
        req.error = "the data subject's identity could not be verified; nothing was erased"
        audit.append(session, type="identity_rejected", actor=actor, request_id=req.id, subject_key=req.subject_key,
                     payload={"note": note, "paused_s": round(paused, 3)})
        session.add(req)
        notify.status_changed(session, req)
        return req
    req.identity_status = "verified"
    audit.append(session, type="identity_verified", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"note": note, "paused_s": round(paused, 3), "due_at": req.due_at.isoformat()})
    models = _models_holding(session, req.subject_key)
    _set_admitted(req, models)
    session.add(req)
    _record_admission(session, req, models, actor=actor, first_event="erasure_admitted")
    return req


def models_to_enqueue(session: Session, request_id: str) -> list[str]:
    return list(session.exec(select(ErasureTarget.model_name).where(ErasureTarget.request_id == request_id,
                                                                    ErasureTarget.status == "queued")).all())


def get_request(session: Session, *, request_id: str) -> ErasureRequest:
    req = session.get(ErasureRequest, request_id)
    if req is None:
        raise NotFound(f"No erasure request {request_id}.")
    return req


def targets_of(session: Session, request_id: str) -> list[ErasureTarget]:
    return list(session.exec(select(ErasureTarget).where(ErasureTarget.request_id == request_id)
                             .order_by(col(ErasureTarget.model_name))).all())


def list_requests(session: Session, *, status: str | None = None, subject_key: str | None = None,
                  overdue: bool | None = None, after: str | None = None, limit: int = 50) -> list[ErasureRequest]:
    """Newest first; ``after`` is the id of the last row of the previous page."""
    q = select(ErasureRequest)
    if status:
        q = q.where(ErasureRequest.status == status)
    if subject_key:
        q = q.where(ErasureRequest.subject_key == subject_key)
    if overdue:
        q = q.where(col(ErasureRequest.status).in_(OPEN_STATUSES), col(ErasureRequest.due_at) < utcnow())
    if after:
        last = session.get(ErasureRequest, after)
        if last is not None:
            q = q.where((col(ErasureRequest.received_at) < last.received_at)
                        | ((ErasureRequest.received_at == last.received_at) & (col(ErasureRequest.id) < last.id)))
    q = q.order_by(col(ErasureRequest.received_at).desc(), col(ErasureRequest.id).desc()).limit(limit)
    return list(session.exec(q).all())


def cancel_request(session: Session, *, request_id: str, actor: str) -> ErasureRequest:
    """Cancel before any job has picked it up. The suppression entry stays (the subject asked)."""
    req = get_request(session, request_id=request_id)
    targets = targets_of(session, request_id)
    if req.status not in ("queued", "awaiting_identity") or any(t.status != "queued" for t in targets):
        raise Conflict(f"Request is {req.status}; only a queued request (or one awaiting identity verification) "
                       "can be cancelled.", code="not_cancellable")
    req.clock_paused_at = None
    for t in targets:
        t.status = "cancelled"
        session.add(t)
    req.status, req.stage = "cancelled", "cancelled"
    session.add(req)
    audit.append(session, type="erasure_cancelled", actor=actor, request_id=req.id, subject_key=req.subject_key)
    notify.status_changed(session, req)
    return req


def public_view(req: ErasureRequest, targets: list[ErasureTarget], base_url: str) -> dict[str, Any]:
    return {
        "id": req.id,
        "status": req.status,
        "stage": req.stage,
        "percent": round(req.percent, 1),
        "subject_key": req.subject_key,
        "source": req.source,
        "policy": req.policy,
        "received_at": req.received_at,
        "due_at": req.due_at,
        "completed_at": req.completed_at,
        "extended": req.extended_at is not None,
        "identity": req.identity_status,
        "clock_paused": req.clock_paused_at is not None,
        "clock_paused_s": round(req.clock_paused_s, 3),
        "extension_reason": req.extension_reason,
        "status_url": f"{base_url}/v1/erasure-requests/{req.id}",
        "models": [{"model": t.model_name, "status": t.status, "job_id": t.job_id} for t in targets],
        "result": req.result or None,
        "error": req.error,
    }
