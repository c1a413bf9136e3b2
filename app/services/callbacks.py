"""Status callbacks from a durable outbox (DESIGN.md section 6; OpenDSR 8.5-8.8).

Rows are written in the transaction that changes a request's status (``lifecycle`` subscribers), so a
callback exists exactly when the change committed; ``deliver_due`` (a housekeeping beat
task) sends them with exponential backoff and audits every attempt. Everything lives in
the DB, so delivery survives restarts; a row is *claimed* with a short lease before the
HTTP call so no transaction stays open across the network.

Two kinds:
- ``native`` (``ErasureRequest.callback_url``): ``X-Lethe-Signature: t=<unix>,v1=<hex>``
  with ``hex = HMAC-SHA256(callback_hmac_secret, "<t>.<body>")`` (the timestamp lets the
  receiver refuse replays).
- ``opendsr`` (``status_callback_urls``): the spec's body, signed RSA-SHA256 with the
  processor key in ``X-<Dialect>-Signature``, plus ``X-<Dialect>-Processor-Domain``.
"""

from __future__ import annotations

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

from app.core.config import DEV_SECRET, Settings
from app.core.errors import Unavailable
from app.core.signing import get_keys, processor_domain, sign_rsa
from app.db.models import CallbackDelivery, ErasureRequest, OpenDsrRequest, as_utc, utcnow
from app.services import audit, lifecycle

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
        old.status = "superseded"
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


# ---------------------------------------------------------------- signatures


def _hmac_secret(settings: Settings) -> str:
    if settings.env == "production" and settings.callback_hmac_secret == DEV_SECRET:
        raise Unavailable("LETHE_CALLBACK_HMAC_SECRET must be set in production.", code="callback_secret_missing")
    return settings.callback_hmac_secret


def native_signature(secret: str, body: bytes, ts: int) -> str:
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def verify_native_signature(secret: str, header: str, body: bytes, *, tolerance_s: float = 300.0,
                            now: float | None = None) -> bool:
    """What a receiver runs: recompute the HMAC over the raw body and refuse stale timestamps."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        ts = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(native_signature(secret, body, ts), header)


def signed_headers(row: CallbackDelivery, settings: Settings) -> dict[str, str]:
    body = row.body.encode()
    headers = {"Content-Type": "application/json", "X-Lethe-Delivery": str(row.id)}
    if row.kind == "fides":  # resuming a halted Fides privacy request: its own token authorises us
        headers["Authorization"] = f"Bearer {row.auth_token}"
    elif row.kind in ("native", "recipient"):  # recipient: an Art. 19 notice, signed like native callbacks
        headers[NATIVE_HEADER] = native_signature(_hmac_secret(settings), body, int(time.time()))
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


def _attempt(row: CallbackDelivery, settings: Settings, http_client: httpx.Client) -> tuple[int | None, str | None]:
    try:
        resp = http_client.post(row.url, content=row.body.encode(), headers=signed_headers(row, settings),
                                timeout=settings.callback_timeout_s)
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    return resp.status_code, None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"


def _record(s: Session, row: CallbackDelivery, *, now: datetime, code: int | None, error: str | None,
            settings: Settings) -> str:
    row.attempts += 1
    row.lease_until = None
    row.last_error = error
    payload = {"callback_id": row.id, "kind": row.kind, "attempt": row.attempts, "host": urlparse(row.url).netloc,
               "http_status": code}
    if error is None:
        row.delivered_at = now
        row.status = "delivered" if row.status == "pending" else row.status
        outcome = "delivered"
        audit.append(s, type="callback_delivered", actor="lethe", request_id=row.request_id, payload=payload)
    else:
        gave_up = row.attempts >= settings.callback_max_attempts
        if row.status == "pending":
            row.status = "failed" if gave_up else "pending"
        delay = min(MAX_BACKOFF_S, settings.callback_backoff_s * 2 ** (row.attempts - 1))
        row.next_attempt_at = now + timedelta(seconds=delay)
        outcome = "failed"
        audit.append(s, type="callback_failed", actor="lethe", request_id=row.request_id,
                     payload={**payload, "error": error, "gave_up": gave_up,
                              "next_attempt_at": None if gave_up else rfc3339(row.next_attempt_at)})
        log.warning("callback %s for request %s failed (%s), attempt %d", row.id, row.request_id, error,
                    row.attempts)
    s.add(row)
    return outcome


def deliver_due(session_factory: Callable[[], Session], *, http_client: httpx.Client, settings: Settings,
                now: datetime | None = None, limit: int = 50) -> dict[str, int]:
    """Send every due callback once; returns counts of delivered and failed attempts."""
    now = as_utc(now) if now else utcnow()
    counts = {"delivered": 0, "failed": 0}
    lease_s = settings.callback_timeout_s * 2 + 30
    for row_id in _claim(session_factory, now, lease_s, limit):
        with session_factory() as s:
            row = s.get(CallbackDelivery, row_id)
            s.expunge(row)
        code, error = _attempt(row, settings, http_client)
        with session_factory() as s:
            row = s.get(CallbackDelivery, row_id)
            counts[_record(s, row, now=now, code=code, error=error, settings=settings)] += 1
            s.commit()
    return counts
