"""Erasure requests: submit, poll, list, cancel."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas import ErasureCreate, ExtendBody, IdentityDecision
from app.api.schemas.callbacks import CallbackList
from app.api.schemas.erasure import ErasureRequestOut, ErasureRequestPage
from app.core import outbound
from app.core.errors import Unprocessable
from app.core.queue import enqueue_unlearn
from app.core.ratelimit import check_intake
from app.core.security import subject_key
from app.ml import policy as policy_rules
from app.services.integrations import callbacks, fides_state, opendsr
from app.services.requests import erasure, intake
from app.services.requests.lifecycle import RequestStatus

router = APIRouter(prefix="/v1/erasure-requests", tags=["erasure"])
Writer = Annotated[Principal, Depends(require("erasure:write"))]
Reader = Annotated[Principal, Depends(require("erasure:read"))]
# ``auto`` and every registered method (app/ml/policy.py mirrors the worker registry; a test keeps them equal).
KNOWN_POLICIES = ("auto", *sorted(policy_rules.METHODS))
Source = Literal["api", "opendsr", "fides"]
# The OpenDSR family's wire dialects, as the OpenDSR service defines them.
Dialect = StrEnum("Dialect", {name: name for name in opendsr.DIALECTS})


@router.post("", status_code=202, response_model=ErasureRequestOut)
def create_erasure_request(body: ErasureCreate, settings: SettingsDep, key: Writer, response: Response,
                           idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None) -> dict[str, Any]:
    """Record an erasure request; unlearning runs in the background. Poll the status URL."""
    check_intake(key.id, rate=settings.intake_rate_per_s, burst=settings.intake_burst)
    policy = body.policy or settings.default_policy
    if policy not in KNOWN_POLICIES:
        raise Unprocessable(f"Unknown policy {policy!r}; known: {list(KNOWN_POLICIES)}.", code="unknown_policy")
    if body.callback_url:
        outbound.check_at_door(str(body.callback_url), settings)  # 422 callback_url_refused
    item = erasure.IntakeItem(
        subject_key=subject_key(settings.subject_key_secret, body.subject_id), reason=body.reason,
        callback_url=str(body.callback_url) if body.callback_url else None, policy=policy,
        idempotency_key=idempotency_key, api_key_id=key.id, actor=f"key:{key.name}",
        identity_verified=body.identity_verified)
    # Durable before the 202: the group committer returns once the request's transaction committed.
    accepted = intake.committer(base_url=settings.base_url, max_batch=settings.intake_batch_max,
                                writers=settings.intake_writers).submit(item)
    for model_name in accepted.enqueue:
        enqueue_unlearn(model_name)  # only after commit (STYLE.md principle 5)
    response.headers["Location"] = accepted.view["status_url"]
    if not accepted.created:
        response.headers["Idempotent-Replayed"] = "true"
    return accepted.view


@router.get("/{request_id}", response_model=ErasureRequestOut)
def get_erasure_request(request_id: str, session: SessionDep, settings: SettingsDep, _: Reader) -> dict[str, Any]:
    """Status, stage, percent and (when done) the result of one request."""
    req = erasure.get_request(session, request_id=request_id)
    return erasure.view_of(session, req, settings.base_url)


@router.get("", response_model=ErasureRequestPage)
def list_erasure_requests(session: SessionDep, settings: SettingsDep, _: Reader,
                          status: RequestStatus | None = None, subject_id: str | None = None,
                          overdue: bool | None = None, source: Source | None = None,
                          dialect: Dialect | None = None,
                          external_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
                          at_risk: bool | None = None,
                          order: Annotated[str, Query(pattern="^(received|due)$")] = "received",
                          cursor: str | None = None,
                          limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
    """List requests with a cursor: newest first, or ``order=due`` (unfinished ones by deadline, overdue first);
    filter by status, subject, overdue, source (api, opendsr, fides) and, for OpenDSR-family requests, the
    dialect they arrived in (opengdpr, opendsr, opencompliance), by ``external_id`` (a Fides
    privacy_request_id, an OpenDSR subject_request_id), and by ``at_risk``: scheduled erasures whose exact
    version may miss its ``exact_due_at``. An unknown status, source or dialect, or a
    cursor that names no request, is a 422 (never an unfiltered or restarted listing)."""
    key = subject_key(settings.subject_key_secret, subject_id) if subject_id else None
    rows = erasure.list_requests(session, status=status, subject_key=key, overdue=overdue, source=source,
                                 dialect=dialect, external_id=external_id, order=order, after=cursor, limit=limit,
                                 at_risk=at_risk)
    fides = fides_state.views(session, rows)
    items = [erasure.public_view(r, erasure.targets_of(session, r.id), settings.base_url, fides=fides[r.id])
             for r in rows]
    return {"items": items, "next_cursor": rows[-1].id if len(rows) == limit else None}


@router.delete("/{request_id}", status_code=202, response_model=ErasureRequestOut)
def cancel_erasure_request(request_id: str, session: SessionDep, settings: SettingsDep, key: Writer) -> dict[str, Any]:
    """Cancel a request that no job has started yet."""
    req = erasure.cancel_request(session, request_id=request_id, actor=f"key:{key.name}")
    session.commit()
    return erasure.view_of(session, req, settings.base_url)


@router.post("/{request_id}/extend", response_model=ErasureRequestOut)
def extend_erasure_deadline(request_id: str, body: ExtendBody, session: SessionDep, settings: SettingsDep,
                            key: Writer) -> dict[str, Any]:
    """Extend the deadline once by two months, with reasons, within the first month (GDPR Art. 12(3))."""
    req = erasure.extend_deadline(session, request_id=request_id, reason=body.reason, actor=f"key:{key.name}")
    view = erasure.view_of(session, req, settings.base_url)
    session.commit()
    return view


@router.post("/{request_id}/identity", response_model=ErasureRequestOut)
def decide_identity(request_id: str, body: IdentityDecision, session: SessionDep, settings: SettingsDep,
                    key: Writer) -> dict[str, Any]:
    """End the identity check of a request sent with ``identity_verified: false`` (Art. 12(6)).

    ``verified: true`` resumes the paused clock (the pause is added to ``due_at``) and starts the
    erasure; ``false`` rejects the request and erases nothing.
    """
    req = erasure.decide_identity(session, request_id=request_id, verified=body.verified, note=body.note,
                                  actor=f"key:{key.name}")
    targets = erasure.targets_of(session, req.id)
    view = erasure.public_view(req, targets, settings.base_url)
    session.commit()
    for model_name in {t.model_name for t in targets if t.status == "queued"}:
        enqueue_unlearn(model_name)  # only after commit
    return view


@router.post("/{request_id}/retry", status_code=202, response_model=ErasureRequestOut)
def retry(request_id: str, session: SessionDep, settings: SettingsDep, key: Writer) -> dict[str, Any]:
    """Retry a ``failed`` erasure: it is queued again with fresh attempts (409 unless failed)."""
    req = erasure.retry_request(session, request_id=request_id, actor=f"key:{key.name}")
    models = erasure.models_to_enqueue(session, req.id)
    view = erasure.view_of(session, req, settings.base_url)
    session.commit()
    for model_name in models:
        enqueue_unlearn(model_name)  # only after commit
    return view


@router.get("/{request_id}/callbacks", response_model=CallbackList)
def list_callbacks(request_id: str, session: SessionDep, _: Reader) -> dict[str, Any]:
    """The request's outbound deliveries (callback, OpenDSR, Art. 19, Fides): status, attempts, last error."""
    erasure.get_request(session, request_id=request_id)  # 404 for an unknown request
    return {"items": callbacks.deliveries(session, request_id=request_id)}
