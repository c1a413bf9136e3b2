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
from app.db.models import ErasureRequest, FidesResume, utcnow
from app.services import callbacks, erasure, lifecycle

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
    if direction != "two_way" or req.status in DONE:
        return {"halt": False}, req
    if not reply_to or not token:
        raise Unprocessable("A two-way webhook needs the reply-to and reply-to-token headers.", code="no_reply_to")
    if session.get(FidesResume, privacy_request_id) is None:
        session.add(FidesResume(privacy_request_id=privacy_request_id, request_id=req.id,
                                reply_to=urljoin((settings.fides_url or "").rstrip("/") + "/", reply_to.lstrip("/"))
                                if settings.fides_url else reply_to, token=token))
    return {"halt": True}, req


def resume_if_done(session: Session, req: ErasureRequest) -> None:
    """Called on every status change: queue the resume of a halted Fides request once it is done."""
    if req.source != "fides" or req.status not in DONE:
        return
    row = session.exec(select(FidesResume).where(FidesResume.request_id == req.id)).first()
    if row is None or row.resumed_at is not None:
        return
    callbacks.enqueue(session, kind="fides", request_id=req.id, url=row.reply_to, body={}, auth_token=row.token)
    row.resumed_at = utcnow()
    session.add(row)
