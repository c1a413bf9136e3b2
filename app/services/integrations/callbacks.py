"""Status callbacks from a durable outbox (DESIGN.md section 6; OpenDSR 8.5-8.8).

Rows are written in the transaction that changes a request's status (``lifecycle`` subscribers), so a
callback exists exactly when the change committed; ``deliver_due`` (a housekeeping beat
task) sends them with exponential backoff and audits every attempt. Everything lives in
the DB, so delivery survives restarts; a row is *claimed* with a short lease before the
HTTP call so no transaction stays open across the network.

Two kinds:
- ``native`` (``ErasureRequest.callback_url``): ``X-Lethe-Signature: t=<unix>,v1=<hex>``
  with ``hex = HMAC-SHA256(callback_hmac_secret, "<t>.<body>")`` (the timestamp lets the
  receiver refuse replays), and the same message signed the Standard Webhooks way
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>``; standardwebhooks.com)
  so receivers can verify it with those libraries. During a secret rotation
  (``LETHE_CALLBACK_HMAC_SECRET_PREVIOUS``) both headers carry a signature per secret.
- ``opendsr`` (``status_callback_urls``): the spec's body, signed RSA-SHA256 with the
  processor key in ``X-<Dialect>-Signature``, plus ``X-<Dialect>-Processor-Domain``.
- ``fides``: the resume of a halted Fides privacy request, ``Authorization: Bearer <reply-to-token>``;
  its own timeout (``fides_resume_timeout_s``); Fides' answer is read by ``fides_state`` (a 400 for a
  request already past ``paused`` is done, an expired token is given up at once).
A receiver's token is deleted from its row once the delivery ends, whatever the outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import httpx
from sqlalchemy import or_
from sqlmodel import Session, col, select

from app.core import outbound
from app.core.config import DEV_SECRET, Settings
from app.core.errors import Unavailable
from app.core.signing import get_keys, processor_domain, sign_rsa
from app.db.models import CallbackDelivery, ErasureRequest, OpenDsrRequest, as_utc, utcnow
from app.services import audit
from app.services.integrations import fides_state
from app.services.requests import lifecycle

log = logging.getLogger("lethe.callbacks")
NATIVE_HEADER = "X-Lethe-Signature"
HEADER_PREFIX = {"opengdpr": "X-OpenGDPR", "opendsr": "X-OpenDSR", "opencompliance": "X-OpenCompliance"}
# Lethe status -> OpenDSR request_status (spec section 8 has no "failed": a failed erasure is
# still owed, an operator re-runs it, so it stays in_progress towards the controller).
REQUEST_STATUS = {"received": "pending", "queued": "pending", "running": "in_progress", "verifying": "in_progress",
                  "deploying": "in_progress", "scheduled": "in_progress", "failed": "in_progress", "completed": "completed",
                  "no_data": "completed", "cancelled": "cancelled",
                  # Native-only states (OpenDSR controllers verify identity before they send):
                  "awaiting_identity": "pending", "rejected": "cancelled"}
MAX_BACKOFF_S = 3600.0


def rfc3339(dt: datetime | None) -> str | None:
    return as_utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ") if dt else None


def dumps(body: dict[str, Any]) -> str:
    """The one serialisation of every signed body (compact, sorted keys)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def certificate_url(base_url: str, request_id: str) -> str:
    return f"{base_url}/v1/erasure-requests/{request_id}/certificate"


def enqueue(session: Session, *, kind: str, request_id: str, url: str, body: dict[str, Any],
            dialect: str | None = None, auth_token: str | None = None) -> CallbackDelivery:
    """Add one outbox row; an older undelivered row for the same target is superseded (bodies carry the
    full current state, so a stale retry must not arrive after a newer status)."""
    for old in session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == request_id,
                                                           CallbackDelivery.url == url,
                                                           CallbackDelivery.kind == kind,
                                                           CallbackDelivery.status == "pending")).all():
        old.status, old.auth_token = "superseded", None
        session.add(old)
    row = CallbackDelivery(kind=kind, dialect=dialect, request_id=request_id, url=url, body=dumps(body),
                           auth_token=auth_token)
    session.add(row)
    return row


def native_body(req: ErasureRequest, base_url: str) -> dict[str, Any]:
    done = req.status in lifecycle.ERASED
    return {"event": "erasure_request.status_changed", "id": req.id, "status": req.status, "stage": req.stage,
            "received_at": rfc3339(req.received_at), "due_at": rfc3339(req.due_at),
            "completed_at": rfc3339(req.completed_at), "status_url": f"{base_url}/v1/erasure-requests/{req.id}",
            "certificate_url": certificate_url(base_url, req.id) if done else None}


def opendsr_body(row: OpenDsrRequest, *, url: str, request_status: str, expected: datetime,
                 results_url: str | None) -> dict[str, Any]:
    body = {"controller_id": row.controller_id, "status_callback_url": url,
            "subject_request_id": row.subject_request_id, "request_status": request_status,
            "expected_completion_time": rfc3339(expected)}
    if results_url:
        body["results_url"] = results_url
    return body


def announce_opendsr(session: Session, row: OpenDsrRequest, *, request_id: str, request_status: str,
                     expected: datetime, results_url: str | None = None) -> None:
    """Queue one callback per ``status_callback_urls`` entry when the spec-level status changed."""
    if row.last_request_status == request_status:
        return
    row.last_request_status = request_status
    session.add(row)
    for url in row.status_callback_urls:
        enqueue(session, kind="opendsr", dialect=row.dialect, request_id=request_id, url=url,
                body=opendsr_body(row, url=url, request_status=request_status, expected=expected,
                                  results_url=results_url))


def deliveries(session: Session, *, request_id: str) -> list[dict[str, Any]]:
    """A request's outbox rows as its status page shows them (host only: a URL may carry a token)."""
    rows = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == request_id)
                        .order_by(col(CallbackDelivery.id))).all()
    return [{"id": r.id, "kind": r.kind, "host": urlparse(r.url).hostname, "status": r.status,
             "attempts": r.attempts, "last_error": r.last_error, "created_at": r.created_at,
             "delivered_at": r.delivered_at} for r in rows]


# ---------------------------------------------------------------- signatures


def _hmac_secrets(settings: Settings) -> list[str]:
    """The current secret, then the one being rotated out (if any): both sign during a rotation."""
    if settings.env == "production" and settings.callback_hmac_secret == DEV_SECRET:
        raise Unavailable("LETHE_CALLBACK_HMAC_SECRET must be set in production.", code="callback_secret_missing")
    previous = settings.callback_hmac_secret_previous
    return [settings.callback_hmac_secret, *([previous] if previous and previous != settings.callback_hmac_secret
                                             else [])]


def _mac(secret: str, ts: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def native_signature(secret: str | list[str], body: bytes, ts: int) -> str:
    """``t=<unix>,v1=<hex>[,v1=<hex>...]``: one ``v1`` per secret (two during a rotation)."""
    secrets = [secret] if isinstance(secret, str) else secret
    return ",".join([f"t={ts}", *(f"v1={_mac(s, ts, body)}" for s in secrets)])


def verify_native_signature(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
                            now: float | None = None) -> bool:
    """What a receiver runs: recompute the HMAC over the raw body, accept it if any ``v1`` matches,
    and refuse stale timestamps."""
    try:
        parts = [p.split("=", 1) for p in header.split(",")]
        ts = int(next(v for k, v in parts if k == "t"))
    except (ValueError, StopIteration):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    expected = _mac(secret, ts, body)
    return any(k == "v1" and hmac.compare_digest(expected, v) for k, v in parts)


def standard_webhooks_secret(secret: str) -> str:
    """The receiver-side form of a Lethe callback secret for Standard Webhooks libraries: the HMAC key
    is the secret's UTF-8 bytes, which those libraries take as ``whsec_<base64>``."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def standard_webhooks_headers(secrets: list[str], *, msg_id: str, ts: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks: ``v1,<base64 HMAC-SHA256(key, "<id>.<ts>.<body>")>``, space-separated per secret."""
    signed = f"{msg_id}.{ts}.".encode() + body
    sigs = " ".join("v1," + base64.b64encode(hmac.new(s.encode(), signed, hashlib.sha256).digest()).decode()
                    for s in secrets)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sigs}


def signed_headers(row: CallbackDelivery, settings: Settings) -> dict[str, str]:
    body = row.body.encode()
    headers = {"Content-Type": "application/json", "X-Lethe-Delivery": str(row.id)}
    if row.kind == "fides":  # resuming a halted Fides privacy request: its own token authorises us
        headers["Authorization"] = f"Bearer {row.auth_token}"
    elif row.kind in ("native", "recipient"):  # recipient: an Art. 19 notice, signed like native callbacks
        secrets, ts = _hmac_secrets(settings), int(time.time())
        headers[NATIVE_HEADER] = native_signature(secrets, body, ts)
        # The id is the outbox row: the same across retries, as Standard Webhooks asks (receivers dedupe on it).
        headers.update(standard_webhooks_headers(secrets, msg_id=f"msg_lethe_{row.id}", ts=ts, body=body))
    else:
        prefix = HEADER_PREFIX[row.dialect or "opendsr"]
        headers[f"{prefix}-Processor-Domain"] = processor_domain(settings)
        headers[f"{prefix}-Signature"] = sign_rsa(get_keys(settings), body)
    return headers


# ---------------------------------------------------------------- delivery


def _claim(session_factory: Callable[[], Session], now: datetime, lease_s: float, limit: int) -> list[int]:
    with session_factory() as s:
        q = (select(CallbackDelivery).where(CallbackDelivery.status == "pending",
                                            col(CallbackDelivery.next_attempt_at) <= now,
                                            or_(col(CallbackDelivery.lease_until).is_(None),
                                                col(CallbackDelivery.lease_until) < now))
             .order_by(col(CallbackDelivery.id)).limit(limit))
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = s.exec(q).all()
        for r in rows:
            r.lease_until = now + timedelta(seconds=lease_s)
            s.add(r)
        ids = [r.id for r in rows]
        s.commit()
        return ids


def _attempt(row: CallbackDelivery, settings: Settings,
             client: outbound.Outbound) -> tuple[int | None, str | None, str | None]:
    """One POST through the outbound guard: (HTTP status or None, error or None, the refusal's body for a
    Fides resume: fides_state reads it). ``outbound.Refused`` propagates (permanent, see ``_refuse``)."""
    fides = row.kind == "fides"  # Fides runs the rest of its request inside the resume call: longer timeout
    try:
        resp = client.post(row.url, content=row.body.encode(), headers=signed_headers(row, settings),
                           read_timeout_s=settings.fides_resume_timeout_s if fides else None)
    except outbound.Refused:
        raise
    except (httpx.HTTPError, outbound.OutboundError) as exc:  # connection, timeout, DNS, size cap: retried
        return None, type(exc).__name__, None
    ok = 200 <= resp.status_code < 300
    answer = resp.body.decode(errors="replace")[:1000] if fides and not ok else None
    return resp.status_code, None if ok else f"HTTP {resp.status_code}", answer


def _refuse(s: Session, row: CallbackDelivery, *, reason: str) -> str:
    """A target inside the network (found only at delivery: a name resolving there): this delivery fails
    for good, the erasure goes on. Audited ``callback_refused``; the row shows why."""
    row.attempts += 1
    row.lease_until = None
    row.last_error = f"refused: {reason}"
    if row.status == "pending":
        row.status = "refused"
    audit.append(s, type="callback_refused", actor="lethe", request_id=row.request_id,
                 payload={"callback_id": row.id, "kind": row.kind, "host": urlparse(row.url).hostname,
                          "reason": reason})
    log.warning("callback %s for request %s refused: %s", row.id, row.request_id, reason)
    s.add(row)
    return "refused"


def _record(s: Session, row: CallbackDelivery, *, now: datetime, code: int | None, error: str | None,
            settings: Settings, answer: str | None = None) -> str:
    row.attempts += 1
    row.lease_until = None
    payload = {"callback_id": row.id, "kind": row.kind, "attempt": row.attempts, "host": urlparse(row.url).netloc,
               "http_status": code}
    give_up_now = False
    if row.kind == "fides":  # what Fides' answer means is fides_state's to say (idempotent resume, expiry)
        verdict = fides_state.read_answer(code, answer, error)
        payload.update(fides_state.settle(s, row, verdict))
        error = None if verdict.outcome == "done" else (verdict.detail or error)
        give_up_now = verdict.outcome == "give_up"
    row.last_error = error
    if error is None:
        row.delivered_at = now
        row.status = "delivered" if row.status == "pending" else row.status
        row.auth_token = None  # a receiver's token is used once (Fides: it could resume other requests)
        outcome = "delivered"
        audit.append(s, type="callback_delivered", actor="lethe", request_id=row.request_id, payload=payload)
    else:
        gave_up = give_up_now or row.attempts >= settings.callback_max_attempts
        if row.status == "pending":
            row.status = "failed" if gave_up else "pending"
        delay = min(MAX_BACKOFF_S, settings.callback_backoff_s * 2 ** (row.attempts - 1))
        row.next_attempt_at = now + timedelta(seconds=delay)
        outcome = "failed"
        audit.append(s, type="callback_failed", actor="lethe", request_id=row.request_id,
                     payload={**payload, "error": error, "gave_up": gave_up,
                              "next_attempt_at": None if gave_up else rfc3339(row.next_attempt_at)})
        if gave_up:
            row.auth_token = None
        log.warning("callback %s for request %s failed (%s), attempt %d", row.id, row.request_id, error,
                    row.attempts)
    s.add(row)
    return outcome


def deliver_due(session_factory: Callable[[], Session], *, settings: Settings,
                client: outbound.Outbound | None = None, now: datetime | None = None,
                limit: int = 50) -> dict[str, int]:
    """Send every due callback once through the outbound guard; returns counts of delivered, failed
    and refused attempts."""
    now = as_utc(now) if now else utcnow()
    client = client or outbound.Outbound.from_settings(settings)
    fides_client = client.admitting(settings.fides_url)  # the operator's Fides: its resume only
    counts = {"delivered": 0, "failed": 0, "refused": 0}
    lease_s = (max(settings.callback_timeout_s, settings.fides_resume_timeout_s) * 2
               + settings.callback_connect_timeout_s + 30)
    for row_id in _claim(session_factory, now, lease_s, limit):
        with session_factory() as s:
            row = s.get(CallbackDelivery, row_id)
            s.expunge(row)
        try:
            code, error, answer = _attempt(row, settings, fides_client if row.kind == "fides" else client)
        except outbound.Refused as exc:
            with session_factory() as s:
                counts[_refuse(s, s.get(CallbackDelivery, row_id), reason=exc.detail)] += 1
                s.commit()
            continue
        with session_factory() as s:
            row = s.get(CallbackDelivery, row_id)
            counts[_record(s, row, now=now, code=code, error=error, settings=settings, answer=answer)] += 1
            s.commit()
    return counts
