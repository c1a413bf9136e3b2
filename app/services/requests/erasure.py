"""Erasure intake and status (plain functions; the caller commits, then enqueues).

Intake, in one transaction: the request row, a suppression entry (nothing of this subject
may be ingested from now on), one target per model that holds the subject, and the audit
events. Status changes go through ``app/services/requests/lifecycle.py``.

A model *holds* a subject while any of the subject's sample rows remain for it — deleted or
not: rows are flagged deleted when a job starts and removed only when the erasure completes,
i.e. once every version that can serve is free of the subject. So a request for a subject
whose earlier erasure failed is queued (and reopens the failed one), never ``no_data``.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.core.config import get_settings
from app.core.errors import Conflict, LetheError, NotFound, Unprocessable
from app.db.models import ErasureRequest, ErasureTarget, OpenDsrRequest, Suppression, as_utc, utcnow
from app.data import registry
from app.services import audit
from app.services.integrations import fides_state
from app.services.requests import lifecycle
from app.services.requests.lifecycle import OPEN, RequestStatus, TargetStatus
from app.services.models.schedule import at_risk_ids

OPEN_STATUSES = tuple(sorted(OPEN))


def add_months(dt: datetime, months: int = 1) -> datetime:
    """GDPR Art. 12(3): to the same date ``months`` later (clamped to that month's last day)."""
    index = dt.month - 1 + months
    year, month = dt.year + index // 12, index % 12 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day)


def add_one_month(dt: datetime) -> datetime:
    return add_months(dt, 1)


def legal_due_at(received: datetime) -> datetime:
    """Art. 12(3): one month after receipt (``LETHE_DEADLINE_OVERRIDE_S`` shortens it in tests only)."""
    override = get_settings().deadline_override_s
    return received + timedelta(seconds=override) if override else add_one_month(received)


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


def suppress_many(session: Session, request_of: dict[str, str]) -> None:
    """Add a suppression entry per subject key (``{subject_key: request_id}``) unless one exists
    (the first erasure's stays): one statement, no read first, safe against a concurrent erasure
    of the same subject."""
    if not request_of:
        return
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    session.execute(dialect_insert(Suppression).values([{"subject_key": k, "request_id": r, "created_at": now}
                                                for k, r in sorted(request_of.items())])
                    .on_conflict_do_nothing(index_elements=["subject_key"]))


def _replay(session: Session, idempotency_key: str, subject_key: str) -> ErasureRequest | None:
    existing = session.exec(select(ErasureRequest).where(ErasureRequest.idempotency_key == idempotency_key)).first()
    if existing is not None and existing.subject_key != subject_key:
        raise _key_reused()
    return existing


def _key_reused() -> Conflict:
    return Conflict("This Idempotency-Key was already used for a different request.", code="idempotency_key_reused")


@dataclass(frozen=True)
class IntakeItem:
    """One erasure request as received (the subject already pseudonymised)."""

    subject_key: str
    reason: str | None = None
    callback_url: str | None = None
    policy: str = "auto"
    idempotency_key: str | None = None
    api_key_id: str | None = None
    source: str = "api"
    external_id: str | None = None
    actor: str = "api"
    identity_verified: bool = True

    def __post_init__(self) -> None:
        # A blank key is no key: stored as "" it would collide in the unique column while the
        # replay lookup skipped it (a 500 schemathesis found).
        if self.idempotency_key is not None and not self.idempotency_key.strip():
            object.__setattr__(self, "idempotency_key", None)


@dataclass
class Intake:
    """The outcome of one item: the request, whether this call created it, and (when it did)
    its targets, so the caller needs no read to describe it."""

    request: ErasureRequest
    created: bool
    targets: list[ErasureTarget] | None = None


def create_request(session: Session, **fields: Any) -> tuple[ErasureRequest, bool]:
    """Record one erasure request (fields of :class:`IntakeItem`). Returns (request, created);
    created is False on an idempotent replay. A concurrent request with the same
    Idempotency-Key may win the insert: this one then replays it."""
    item = IntakeItem(**fields)
    if not item.idempotency_key:
        out = create_requests(session, [item])[0]
    else:
        try:
            with session.begin_nested():
                out = create_requests(session, [item])[0]
        except IntegrityError:
            if existing := _replay(session, item.idempotency_key, item.subject_key):
                return existing, False
            raise
    if isinstance(out, Exception):
        raise out
    return out.request, out.created


def create_requests(session: Session, items: list[IntakeItem]) -> list[Intake | LetheError]:
    """Record a batch of erasure requests in the caller's transaction, in a fixed number of
    statements whatever the batch size (group commit: ``app/services/requests/intake.py``).

    Per item, in one transaction: the request row, a suppression entry (nothing of this subject
    may be ingested from now on), one target per model that holds the subject's samples, and
    the audit events; a subject with no data completes at once as ``no_data``. An item with
    ``identity_verified=False`` (Art. 12(6)) is recorded with its clock paused and nothing is
    suppressed or erased until :func:`decide_identity` confirms the subject.

    An item that is refused (an Idempotency-Key reused for another subject) gets its error in
    its slot and writes nothing. A database error (e.g. a concurrent insert of the same key)
    raises: the caller rolls back and retries the items one by one.
    """
    idem = sorted({i.idempotency_key for i in items if i.idempotency_key})
    known: dict[str, ErasureRequest] = {}
    if idem:
        known = {r.idempotency_key: r for r in session.exec(
            select(ErasureRequest).where(col(ErasureRequest.idempotency_key).in_(idem))).all()}
    subjects = sorted({i.subject_key for i in items if i.identity_verified})
    holding = _holding(session, subjects)
    completed_by, failed = _prior_requests(session, subjects)
    out: list[Intake | LetheError] = []
    fresh: list[tuple[ErasureRequest, IntakeItem, list[str]]] = []
    now = utcnow()
    for item in items:
        if item.idempotency_key and (existing := known.get(item.idempotency_key)) is not None:
            out.append(Intake(existing, False) if existing.subject_key == item.subject_key else _key_reused())
            continue
        req = ErasureRequest(subject_key=item.subject_key, source=item.source, external_id=item.external_id,
                             idempotency_key=item.idempotency_key, api_key_id=item.api_key_id, reason=item.reason,
                             policy=item.policy, received_at=now, due_at=legal_due_at(now),
                             callback_url=item.callback_url)
        # Decide the outcome before the INSERT: intake writes each row once, no UPDATE after it.
        models = sorted(holding.get(item.subject_key, []))
        if item.identity_verified:
            lifecycle.admit(session, req, models, erased_by=completed_by.get(item.subject_key))
        else:
            lifecycle.hold_for_identity(req, now=now)
        if item.idempotency_key:
            known[item.idempotency_key] = req  # a repeat inside this batch replays it
        session.add(req)
        fresh.append((req, item, models))
        out.append(Intake(req, True, []))
    if not fresh:
        return out
    session.flush()  # every request row in one INSERT
    suppress_many(session, {req.subject_key: req.id for req, item, _ in fresh if item.identity_verified})
    targets: dict[str, list[ErasureTarget]] = {}
    with audit.bulk(session):  # every audit event in one INSERT
        for req, item, models in fresh:
            if item.identity_verified:
                targets[req.id] = _record_admission(session, req, models, actor=item.actor,
                                                    first_event="erasure_requested", suppressed=True)
            else:
                lifecycle.awaiting_identity(session, req, actor=item.actor)
    _insert_targets(session, [t for ts in targets.values() for t in ts])  # and every target in one
    # A subject whose earlier erasure failed is still owed it: the new request joins it.
    lifecycle.reopen_owed(session, sorted({req.subject_key for req, item, _ in fresh
                                           if item.identity_verified and req.subject_key in failed}),
                          actor="lethe", reason="a new request for the same subject")
    session.flush()
    for result in out:
        if isinstance(result, Intake) and result.created:
            result.targets = targets.get(result.request.id, [])
    return out


def _holding(session: Session, subjects: list[str]) -> dict[str, list[str]]:
    """subject key -> models holding any of their rows (deleted or not: see the module docstring)."""
    return registry.holding(session, subjects)


def _prior_requests(session: Session, subjects: list[str]) -> tuple[dict[str, str], set[str]]:
    """(subject key -> a completed request that erased them, subject keys with a failed request)."""
    completed_by: dict[str, str] = {}
    failed: set[str] = set()
    if subjects:
        for key, rid, status in session.exec(select(ErasureRequest.subject_key, ErasureRequest.id,
                                                    ErasureRequest.status).where(
                col(ErasureRequest.subject_key).in_(subjects),
                col(ErasureRequest.status).in_((RequestStatus.COMPLETED, RequestStatus.FAILED)))).all():
            if status == RequestStatus.FAILED:
                failed.add(key)
            else:
                completed_by.setdefault(key, rid)
    return completed_by, failed


def _models_holding(session: Session, subject_key: str) -> list[str]:
    return sorted(_holding(session, [subject_key]).get(subject_key, []))


def _insert_targets(session: Session, targets: list[ErasureTarget]) -> None:
    """One multi-row INSERT; the objects stay transient (they describe the rows for the reply)."""
    if targets:
        session.execute(insert(ErasureTarget), [{"request_id": t.request_id, "model_name": t.model_name,
                                                 "status": t.status, "queued_at": t.queued_at} for t in targets])


def _record_admission(session: Session, req: ErasureRequest, models: list[str], *, actor: str,
                      first_event: str, suppressed: bool = False) -> list[ErasureTarget]:
    """Suppress the subject, audit and announce; returns one target per model holding their data,
    for the caller to insert (``_insert_targets``: a batch's targets go in one statement)."""
    if not suppressed:
        suppress_many(session, {req.subject_key: req.id})
    lifecycle.admitted(session, req, models, actor=actor, first_event=first_event)
    return [ErasureTarget(request_id=req.id, model_name=name, queued_at=utcnow()) for name in models]


def decide_identity(session: Session, *, request_id: str, verified: bool, note: str | None,
                    actor: str) -> ErasureRequest:
    """End an identity check (Art. 12(6)): resume the clock and admit the request, or reject it.

    Resuming adds the paused time to ``due_at``. A rejected request erases nothing; the subject
    may ask again. The caller commits, then enqueues ``models_to_enqueue``.
    """
    req = get_request(session, request_id=request_id)
    if req.status != RequestStatus.AWAITING_IDENTITY:
        raise Conflict(f"Request is {req.status}; only a request awaiting identity verification can be decided.",
                       code="not_awaiting_identity")
    now = utcnow()
    paused = (now - as_utc(req.clock_paused_at)).total_seconds() if req.clock_paused_at else 0.0
    req.clock_paused_s += paused
    req.clock_paused_at = None
    req.due_at = as_utc(req.due_at) + timedelta(seconds=paused)
    if not verified:
        req.identity_status = "rejected"
        audit.append(session, type="identity_rejected", actor=actor, request_id=req.id, subject_key=req.subject_key,
                     payload={"note": note, "paused_s": round(paused, 3)})
        lifecycle.reject(session, req, error="the data subject's identity could not be verified; nothing was erased")
        return req
    req.identity_status = "verified"
    audit.append(session, type="identity_verified", actor=actor, request_id=req.id, subject_key=req.subject_key,
                 payload={"note": note, "paused_s": round(paused, 3), "due_at": req.due_at.isoformat()})
    models = _models_holding(session, req.subject_key)
    completed_by, failed = _prior_requests(session, [req.subject_key])
    lifecycle.admit(session, req, models, erased_by=completed_by.get(req.subject_key))
    session.add(req)
    _insert_targets(session, _record_admission(session, req, models, actor=actor, first_event="erasure_admitted"))
    if failed:
        lifecycle.reopen_owed(session, [req.subject_key], actor="lethe", reason="a new request for the same subject")
    session.flush()
    return req


def models_to_enqueue(session: Session, request_id: str) -> list[str]:
    return list(session.exec(select(ErasureTarget.model_name).where(ErasureTarget.request_id == request_id,
                                                                    ErasureTarget.status == TargetStatus.QUEUED)).all())


def retry_request(session: Session, *, request_id: str, actor: str) -> ErasureRequest:
    """An operator retries a ``failed`` erasure: its targets are queued with fresh attempts.
    The caller commits, then enqueues ``models_to_enqueue``."""
    req = get_request(session, request_id=request_id)
    lifecycle.reopen(session, req, actor=actor, reason="retried by an operator")
    session.flush()
    return req


def get_request(session: Session, *, request_id: str) -> ErasureRequest:
    req = session.get(ErasureRequest, request_id)
    if req is None:
        raise NotFound(f"No erasure request {request_id}.")
    return req


def targets_of(session: Session, request_id: str) -> list[ErasureTarget]:
    return list(session.exec(select(ErasureTarget).where(ErasureTarget.request_id == request_id)
                             .order_by(col(ErasureTarget.model_name))).all())


def list_requests(session: Session, *, status: str | None = None, subject_key: str | None = None,
                  overdue: bool | None = None, source: str | None = None, dialect: str | None = None,
                  external_id: str | None = None, order: str = "received", after: str | None = None,
                  limit: int = 50, at_risk: bool | None = None) -> list[ErasureRequest]:
    """``order="received"``: newest first; ``"due"``: unfinished requests by deadline (overdue
    first), then finished ones. ``after`` is the id of the last row of the previous page."""
    q = select(ErasureRequest)
    if status:
        q = q.where(ErasureRequest.status == status)
    if source:
        q = q.where(ErasureRequest.source == source)
    if subject_key:
        q = q.where(ErasureRequest.subject_key == subject_key)
    if external_id:
        q = q.where(ErasureRequest.external_id == external_id)
    if dialect:
        q = q.where(col(ErasureRequest.id).in_(select(OpenDsrRequest.erasure_request_id)
                                              .where(OpenDsrRequest.dialect == dialect)))
    if overdue:
        q = q.where(col(ErasureRequest.status).in_(OPEN_STATUSES), col(ErasureRequest.due_at) < utcnow())
    if at_risk:  # issue 16: an exact erasure that may miss its exact_due_at
        q = q.where(col(ErasureRequest.id).in_(at_risk_ids(session)))
    last = session.get(ErasureRequest, after) if after else None
    if after and last is None:  # a stale or mistyped cursor must not silently restart from the first page
        raise Unprocessable(f"Cursor {after!r} names no erasure request; start without a cursor.",
                            code="invalid_cursor")
    received, due, rid = col(ErasureRequest.received_at), col(ErasureRequest.due_at), col(ErasureRequest.id)
    if order == "due":
        closed = case((col(ErasureRequest.status).in_(sorted(lifecycle.FINISHED)), 1), else_=0)
        if last is not None:
            last_closed = int(last.status in lifecycle.FINISHED)
            q = q.where((closed > last_closed) | ((closed == last_closed) & (
                (due > last.due_at) | ((due == last.due_at) & (rid > last.id)))))
        q = q.order_by(closed, due, rid)
    else:
        if last is not None:
            q = q.where((received < last.received_at) | ((received == last.received_at) & (rid < last.id)))
        q = q.order_by(received.desc(), rid.desc())
    return list(session.exec(q.limit(limit)).all())


def cancel_request(session: Session, *, request_id: str, actor: str) -> ErasureRequest:
    """Cancel before any job has picked it up. The suppression entry stays (the subject asked)."""
    req = get_request(session, request_id=request_id)
    lifecycle.cancel(session, req, targets_of(session, request_id), actor=actor)
    return req


def view_of(session: Session, req: ErasureRequest, base_url: str) -> dict[str, Any]:
    """The status document of one request, with its Fides integration state."""
    return public_view(req, targets_of(session, req.id), base_url, fides=fides_state.views(session, [req])[req.id])


def public_view(req: ErasureRequest, targets: list[ErasureTarget], base_url: str, *,
                fides: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": req.id,
        "status": req.status,
        "stage": req.stage,
        "percent": round(req.percent, 1),
        "subject_key": req.subject_key,
        "source": req.source,
        "external_id": req.external_id,
        "policy": req.policy,
        "received_at": req.received_at,
        "due_at": req.due_at,
        "completed_at": req.completed_at,
        "forgotten_at": req.forgotten_at,
        "exact_due_at": req.exact_due_at,
        "extended": req.extended_at is not None,
        "identity": req.identity_status,
        "clock_paused": req.clock_paused_at is not None,
        "clock_paused_s": round(req.clock_paused_s, 3),
        "extension_reason": req.extension_reason,
        "status_url": f"{base_url}/v1/erasure-requests/{req.id}",
        "models": [{"model": t.model_name, "status": t.status, "job_id": t.job_id, "attempts": t.attempts,
                    "not_before": t.not_before} for t in targets],
        "result": req.result or None,
        "error": req.error,
        "fides": fides,
    }
