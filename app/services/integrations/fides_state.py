"""The Fides integration's state per halted privacy request (issue 21), and what Fides' answer to
a resume means.

Measured against a real Fides 2.86.2 (``make test-fides``):

* Fides runs the rest of a privacy request *inside* the resume call (eager mode), so a resume can
  outlast its timeout and still succeed; every later try then gets
  ``400 {"detail": "Invalid resume request: privacy request '<id>' status = complete."}``. Fides
  answers the same whenever its operator resumed, cancelled or failed the request first. A
  request that has left ``paused`` needs no resume: the delivery ends as done, audited with the
  status Fides gave.
* The ``reply-to-token`` lives for Fides' ``privacy_request_delay_timeout`` (3,600 minutes by
  default; ``LETHE_FIDES_TOKEN_TTL_S`` must equal it). Past it every resume gets
  ``403 {"detail": "Webhook token expired"}``: retrying cannot help, so the delivery is given up at
  once and the request shows ``token_expired`` (metric ``lethe_fides_requests``, alert
  ``LetheFidesTokenExpired``). Fides keeps the privacy request ``paused`` until its operator acts.
* The token names the webhook, not the request: until it expires it can resume any paused request
  on that webhook. Lethe deletes it once the resume ended (any outcome) or it expired.

States: ``halted`` (Lethe answered ``halt: true``; the erasure runs), ``resuming`` (the resume is
in the outbox), ``resumed`` (Fides took it, or had already gone on: ``fides_status`` complete,
in_processing, ...), ``ended_in_fides`` (Fides had cancelled, denied or failed the request before
Lethe's resume), ``resume_refused`` (another refusal: a wrong ``LETHE_FIDES_URL`` (405), an unknown
request (404), ...; retried with backoff until given up), ``token_expired``.

This module sits below ``callbacks`` and ``fides`` (both import it; it imports neither).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlmodel import Session, col, select

from app.db.models import CallbackDelivery, ErasureRequest, FidesResume, as_utc, utcnow
from app.services import audit

HALTED, RESUMING, RESUMED = "halted", "resuming", "resumed"
ENDED_IN_FIDES, RESUME_REFUSED, TOKEN_EXPIRED = "ended_in_fides", "resume_refused", "token_expired"
STATES = (HALTED, RESUMING, RESUMED, ENDED_IN_FIDES, RESUME_REFUSED, TOKEN_EXPIRED)
# States in which Lethe still holds a token and owes Fides a resume.
OWING = (HALTED, RESUMING, RESUME_REFUSED)
# Fides PrivacyRequestStatus values past ``paused`` (fides.api.schemas.privacy_request): the request
# went on (Lethe's resume that timed out, or Fides' operator) ...
WENT_ON = ("in_processing", "complete", "requires_manual_finalization", "awaiting_email_send")
# ... or was ended in Fides without it.
ENDED = ("canceled", "error", "denied")
_STATUS = re.compile(r"status\s*=\s*([a-z_]+)")

NEXT_STEP = {
    HALTED: "None: Lethe resumes the Fides request when the erasure completes, before token_expires_at.",
    RESUMING: "None: the resume is in the callback outbox (audit events callback_delivered / callback_failed).",
    RESUMED: None,
    ENDED_IN_FIDES: "Check in Fides why the privacy request ended ({fides_status}) before Lethe resumed it; "
                    "Lethe's erasure stands.",
    RESUME_REFUSED: "Fides refused the resume ({detail}); check LETHE_FIDES_URL (it must end in /api/v1) and "
                    "the webhook. Lethe retries with backoff until LETHE_CALLBACK_MAX_ATTEMPTS.",
    TOKEN_EXPIRED: "Fides no longer accepts Lethe's token and keeps privacy request {privacy_request_id} paused. "
                   "Once Lethe's erasure is completed, finish the request in Fides (an operator cancels it or "
                   "runs it again there), and raise Fides' privacy_request_delay_timeout (with "
                   "LETHE_FIDES_TOKEN_TTL_S) above the erasure's time.",
}


@dataclass(frozen=True)
class Verdict:
    """What one resume attempt means: ``done`` ends the delivery as delivered, ``give_up`` as failed
    at once, ``retry`` leaves it to the outbox's backoff."""

    outcome: Literal["done", "retry", "give_up"]
    state: str
    fides_status: str | None = None
    detail: str | None = None


def _detail(body: str | None) -> str:
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    detail = data.get("detail") if isinstance(data, dict) else None
    return (detail if isinstance(detail, str) else json.dumps(detail if detail is not None else data))[:200]


def read_answer(code: int | None, body: str | None, error: str | None = None) -> Verdict:
    """Fides' answer to ``POST /privacy-request/{id}/resume`` (no answer: ``code`` None, ``error``)."""
    if code is not None and 200 <= code < 300:
        return Verdict("done", RESUMED)
    if code is None:  # timeout or connection error: it may have succeeded (eager mode); the retry tells
        return Verdict("retry", RESUMING, detail=error)
    detail = _detail(body)
    if code == 400 and (m := _STATUS.search(detail)):
        status = m.group(1)
        if status in WENT_ON:
            return Verdict("done", RESUMED, status, detail)
        if status in ENDED:
            return Verdict("done", ENDED_IN_FIDES, status, detail)
    if code == 403 and "expired" in detail.lower():
        return Verdict("give_up", TOKEN_EXPIRED, detail=detail)
    return Verdict("retry", RESUME_REFUSED, detail=f"HTTP {code}: {detail}" if detail else f"HTTP {code}")


def _row_for(session: Session, delivery: CallbackDelivery) -> FidesResume | None:
    return session.exec(select(FidesResume).where(FidesResume.request_id == delivery.request_id,
                                                  FidesResume.reply_to == delivery.url)).first()


def settle(session: Session, delivery: CallbackDelivery, verdict: Verdict) -> dict[str, Any]:
    """Record one attempt's verdict on the halted request; returns what the attempt's audit payload adds."""
    row = _row_for(session, delivery)
    if row is not None:
        row.state, row.detail = verdict.state, verdict.detail
        row.fides_status = verdict.fides_status or row.fides_status
        session.add(row)
    return {"privacy_request_id": row.privacy_request_id if row else None, "fides_state": verdict.state,
            **({"fides_status": verdict.fides_status} if verdict.fides_status else {})}


def expiry(created_at: datetime, ttl_s: float) -> datetime:
    return as_utc(created_at) + timedelta(seconds=ttl_s)


def expire_tokens(session: Session, *, now: datetime | None = None) -> list[str]:
    """Delete every token past its expiry (housekeeping beat): a halted request and a resume still in the
    outbox become ``token_expired``, visibly, and the outbox row is given up. Returns the privacy request ids.
    The caller commits."""
    now = as_utc(now) if now else utcnow()
    rows = session.exec(select(FidesResume).where(col(FidesResume.state).in_(OWING),
                                                  col(FidesResume.token_expires_at) <= now)).all()
    for row in rows:
        mark_expired(session, row, detail="the reply-to-token passed its expiry (LETHE_FIDES_TOKEN_TTL_S)")
        for d in session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == row.request_id,
                                                             CallbackDelivery.kind == "fides",
                                                             CallbackDelivery.url == row.reply_to,
                                                             CallbackDelivery.status == "pending")).all():
            d.status, d.auth_token, d.last_error = "failed", None, "token expired"
            session.add(d)
    return [r.privacy_request_id for r in rows]


def mark_expired(session: Session, row: FidesResume, *, detail: str) -> None:
    row.state, row.token, row.detail = TOKEN_EXPIRED, None, detail
    session.add(row)
    audit.append(session, type="fides_token_expired", actor="lethe", request_id=row.request_id,
                 payload={"privacy_request_id": row.privacy_request_id,
                          "token_expires_at": row.token_expires_at.isoformat() if row.token_expires_at else None,
                          "detail": detail})


def view(row: FidesResume | None, req: ErasureRequest) -> dict[str, Any] | None:
    """The ``fides`` block of a request's view (None for a request that is not a halted Fides one)."""
    if row is None:
        if req.source != "fides":
            return None
        return {"privacy_request_id": req.external_id, "state": "not_halted", "token_expires_at": None,
                "fides_status": None, "detail": None, "next_step": None}
    step = NEXT_STEP[row.state]
    return {"privacy_request_id": row.privacy_request_id, "state": row.state,
            "token_expires_at": as_utc(row.token_expires_at) if row.token_expires_at else None,
            "fides_status": row.fides_status, "detail": row.detail,
            "next_step": step.format(privacy_request_id=row.privacy_request_id, fides_status=row.fides_status,
                                     detail=row.detail) if step else None}


def views(session: Session, requests: list[ErasureRequest]) -> dict[str, dict[str, Any] | None]:
    """request id -> its ``fides`` block, in one query for a page of requests."""
    ids = [r.id for r in requests if r.source == "fides"]
    rows = {r.request_id: r for r in session.exec(select(FidesResume).where(
        col(FidesResume.request_id).in_(ids))).all()} if ids else {}
    return {r.id: view(rows.get(r.id), r) for r in requests}
