"""Fides (ethyca/fides) as a caller: a policy-webhook target (DESIGN.md section 6).

Fides POSTs ``{privacy_request_id, direction, callback_type, identity}`` to a policy webhook.
For an erasure policy's *pre-execution* webhook Lethe records an erasure request for the
identity it knows the subject by (``LETHE_FIDES_IDENTITY_FIELDS``). A ``two_way`` webhook is
answered ``{"halt": true}`` while Lethe unlearns, and Lethe resumes the privacy request when the
erasure completes: ``POST <reply-to>`` with the ``reply-to-token`` as bearer token, sent from the
durable callback outbox (so a resume survives restarts and is retried). Post-execution
webhooks are acknowledged and otherwise ignored: Lethe acts before Fides' own erasure runs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin

from sqlmodel import Session, select

from app.core.config import Settings
from app.core.errors import Unprocessable
from app.core.security import subject_key
from app.db.models import ErasureRequest, FidesResume, as_utc, utcnow
from app.services import audit
from app.services.integrations import callbacks, fides_state
from app.services.requests import erasure, lifecycle

DONE = lifecycle.ERASED


def subject_id_of(identity: dict[str, Any], fields: str) -> str | None:
    for name in (f.strip() for f in fields.split(",") if f.strip()):
        value = identity.get(name)
        if isinstance(value, dict):  # newer Fides sends {"value": ..., "label": ...}
            value = value.get("value")
        if value not in (None, ""):
            return str(value)
    return None


def handle_webhook(session: Session, *, privacy_request_id: str, direction: str, callback_type: str,
                   identity: dict[str, Any], reply_to: str | None, token: str | None, settings: Settings,
                   actor: str) -> tuple[dict[str, Any], ErasureRequest | None]:
    """Returns (the body Fides expects, the erasure request if one was recorded). The caller commits."""
    if callback_type != "pre":
        return {}, None
    subject_id = subject_id_of(identity, settings.fides_identity_fields)
    if subject_id is None:
        raise Unprocessable(f"None of the identity fields {settings.fides_identity_fields} is present.",
                            code="no_usable_identity")
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject_id),
                                    source="fides", external_id=privacy_request_id,
                                    idempotency_key=f"fides:{privacy_request_id}", actor=actor)
    row = session.get(FidesResume, privacy_request_id)
    audit.append(session, type="fides_webhook", actor=actor, request_id=req.id,
                 payload={"privacy_request_id": privacy_request_id, "direction": direction,
                          "halt": direction == "two_way" and req.status not in DONE})
    if direction != "two_way" or req.status in DONE:
        if row is not None and row.state in fides_state.OWING + (fides_state.TOKEN_EXPIRED,):
            # Fides ran the webhook again (its operator re-ran the request): it goes on without a resume.
            row.state, row.token, row.detail = fides_state.RESUMED, None, "Fides called again; answered halt: false"
            session.add(row)
        return {"halt": False}, req
    if not reply_to or not token:
        raise Unprocessable("A two-way webhook needs the reply-to and reply-to-token headers.", code="no_reply_to")
    now = utcnow()
    if row is None:
        row = FidesResume(privacy_request_id=privacy_request_id, request_id=req.id, reply_to=_resume_url(
            reply_to, settings), created_at=now)
    if row.state in fides_state.OWING + (fides_state.TOKEN_EXPIRED,) and row.resumed_at is None:
        # The first call, or Fides halted the request again with a fresh token (a retry): keep the newest.
        row.token, row.state, row.detail = token, fides_state.HALTED, None
        row.token_expires_at = fides_state.expiry(now, settings.fides_token_ttl_s)
        session.add(row)
    return {"halt": True}, req


def _resume_url(reply_to: str, settings: Settings) -> str:
    if not settings.fides_url:
        return reply_to
    return urljoin(settings.fides_url.rstrip("/") + "/", reply_to.lstrip("/"))


def resume_if_done(session: Session, req: ErasureRequest) -> None:
    """Called on every status change: queue the resume of a halted Fides request once it is done. The token
    moves into the outbox row (deleted there once the resume ends); an expired one is never sent."""
    if req.source != "fides" or req.status not in DONE:
        return
    row = session.exec(select(FidesResume).where(FidesResume.request_id == req.id)).first()
    if row is None or row.resumed_at is not None or row.state != fides_state.HALTED:
        return
    now = utcnow()
    if row.token is None or (row.token_expires_at is not None and as_utc(row.token_expires_at) <= now):
        fides_state.mark_expired(session, row, detail="the erasure completed after the reply-to-token expired")
        return
    callbacks.enqueue(session, kind="fides", request_id=req.id, url=row.reply_to, body={}, auth_token=row.token)
    row.resumed_at, row.token, row.state = now, None, fides_state.RESUMING
    session.add(row)
