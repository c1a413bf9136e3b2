"""Signed status callbacks from the outbox, delivered to a real loopback HTTP receiver that checks
signatures the way a controller would (HMAC for the native API, RSA for OpenDSR, spec 8.8)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core import db
from app.core.outbound import Outbound
from app.core.security import subject_key
from app.core.signing import get_keys, verify_rsa
from app.db.models import AuditEvent, CallbackDelivery, Model, OpenDsrRequest, Sample, utcnow
from app.services.integrations import callbacks

HELD = "callback-subject"


class Receiver:
    """A controller's callback endpoint: 403 on a bad signature, else the next scripted status."""

    def __init__(self, secret: str, cert_pem: bytes) -> None:
        self.secret, self.cert_pem = secret, cert_pem
        self.script: dict[str, list[int]] = {}
        self.received: list[tuple[str, dict, dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if "x-lethe-signature" in headers:
                    ok = callbacks.verify_native_signature(receiver.secret, headers["x-lethe-signature"], raw)
                else:
                    prefix = next(h[: -len("-signature")] for h in headers if h.endswith("-signature"))
                    ok = verify_rsa(receiver.cert_pem, raw, headers[f"{prefix}-signature"]) \
                        and headers[f"{prefix}-processor-domain"] == "127.0.0.1"
                status = 403 if not ok else (receiver.script.get(self.path) or [200]).pop(0)
                receiver.received.append((self.path, headers, json.loads(raw) | {"_status": status}))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(settings) -> Iterator[Receiver]:  # noqa: ANN001
    r = Receiver(settings.callback_hmac_secret, get_keys(settings).cert_pem)
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def http(settings) -> Outbound:  # noqa: ANN001
    """The guarded client as housekeeping builds it (tests: loopback admitted, receivers on 127.0.0.1)."""
    return Outbound.from_settings(settings)


def deliver(http: Outbound, settings, now=None) -> dict:  # noqa: ANN001
    return callbacks.deliver_due(lambda: db.new_session(), client=http, settings=settings, now=now)


def events(session: Session, type: str) -> list[AuditEvent]:
    session.expire_all()
    return list(session.exec(select(AuditEvent).where(AuditEvent.type == type).order_by(AuditEvent.seq)).all())


def test_native_and_opendsr_callbacks_are_signed_retried_and_audited(
        client: TestClient, session: Session, admin_headers: dict, receiver: Receiver, http: Outbound,
        settings) -> None:  # noqa: ANN001
    rid = client.post("/v1/erasure-requests", headers=admin_headers,
                      json={"subject_id": "nobody-cb", "callback_url": f"{receiver.url}/native"}).json()["id"]
    srid = str(uuid.uuid4())
    r = client.post("/opendsr/v2/requests", headers=admin_headers, json={
        "regulation": "gdpr", "subject_request_id": srid, "subject_request_type": "erasure",
        "submitted_time": "2024-05-01T10:00:00Z", "status_callback_urls": [f"{receiver.url}/odsr"],
        "subject_identities": [{"identity_type": "controller_customer_id", "identity_value": "nobody-cb2",
                                "identity_format": "raw"}]})
    assert r.status_code == 201
    receiver.script["/native"] = [500]  # the first native attempt fails
    t0 = utcnow()
    assert deliver(http, settings, t0) == {"delivered": 1, "failed": 1, "refused": 0}
    native = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == rid)).one()
    assert (native.status, native.attempts, native.last_error) == ("pending", 1, "HTTP 500")
    assert native.next_attempt_at.replace(tzinfo=None) >= (t0 + timedelta(seconds=settings.callback_backoff_s)) \
        .replace(tzinfo=None)
    assert deliver(http, settings, t0) == {"delivered": 0, "failed": 0, "refused": 0}  # backing off
    assert deliver(http, settings, t0 + timedelta(seconds=settings.callback_backoff_s + 1)) == \
        {"delivered": 1, "failed": 0, "refused": 0}
    # What the receiver saw: valid signatures (else 403), the spec's / Lethe's bodies.
    by_path = {p: b for p, _, b in receiver.received if b["_status"] == 200}
    assert by_path["/native"]["id"] == rid and by_path["/native"]["status"] == "no_data"
    assert by_path["/native"]["certificate_url"].endswith(f"/v1/erasure-requests/{rid}/certificate")
    odsr = by_path["/odsr"]
    assert {k for k in odsr if k != "_status"} >= {"controller_id", "status_callback_url", "subject_request_id",
                                                     "request_status", "expected_completion_time"}
    assert (odsr["subject_request_id"], odsr["request_status"], odsr["status_callback_url"]) == \
        (srid, "completed", f"{receiver.url}/odsr")
    assert any("x-opendsr-signature" in h for _, h, _ in receiver.received)
    assert all(b["_status"] != 403 for _, _, b in receiver.received)
    # Every attempt is audited, without the callback body.
    failed, delivered = events(session, "callback_failed"), events(session, "callback_delivered")
    assert [e.request_id for e in failed] == [rid] and failed[0].payload["http_status"] == 500
    odsr_rid = session.get(OpenDsrRequest, srid).erasure_request_id
    assert sorted(e.request_id for e in delivered) == sorted([rid, odsr_rid])
    assert all("body" not in e.payload and "nobody" not in json.dumps(e.payload) for e in failed + delivered)


def test_bad_signature_is_refused_and_unreachable_target_is_given_up(
        client: TestClient, session: Session, admin_headers: dict, receiver: Receiver, http: Outbound,
        settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    client.post("/v1/erasure-requests", headers=admin_headers,
                json={"subject_id": "nobody-a", "callback_url": f"{receiver.url}/native"})
    receiver.secret = "not-the-secret"  # the receiver now expects another key: 403
    assert deliver(http, settings)["failed"] == 1
    assert receiver.received[-1][2]["_status"] == 403
    # A dead endpoint: connection refused, retried with backoff, then given up (and audited as such).
    monkeypatch.setattr(settings, "callback_max_attempts", 2)
    dead = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = dead.server_address[1]
    dead.server_close()
    rid = client.post("/v1/erasure-requests", headers=admin_headers,
                      json={"subject_id": "nobody-b", "callback_url": f"http://127.0.0.1:{port}/x"}).json()["id"]
    later = utcnow() + timedelta(hours=2)
    deliver(http, settings, later)
    deliver(http, settings, later + timedelta(hours=2))
    row = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == rid)).one()
    session.refresh(row)
    assert (row.status, row.attempts, row.last_error) == ("failed", 2, "ConnectError")
    gave_up = [e for e in events(session, "callback_failed") if e.request_id == rid]
    assert [e.payload["gave_up"] for e in gave_up] == [False, True]
    assert deliver(http, settings, later + timedelta(days=1)) == {"delivered": 0, "failed": 0, "refused": 0}


def test_newer_status_supersedes_an_undelivered_one(
        client: TestClient, session: Session, admin_headers: dict, receiver: Receiver, http: Outbound,
        settings) -> None:  # noqa: ANN001
    session.add(Model(name="mini"))
    session.add(Sample(model_name="mini", subject_key=subject_key(settings.subject_key_secret, HELD), split="train",
                       features={"x": [0.0]}, label=0))
    session.commit()
    rid = client.post("/v1/erasure-requests", headers=admin_headers,
                      json={"subject_id": HELD, "callback_url": f"{receiver.url}/native"}).json()["id"]
    assert client.delete(f"/v1/erasure-requests/{rid}", headers=admin_headers).status_code == 202
    rows = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == rid)
                        .order_by(CallbackDelivery.id)).all()
    assert [(json.loads(r.body)["status"], r.status) for r in rows] == [("queued", "superseded"),
                                                                        ("cancelled", "pending")]
    from workers.housekeeping import deliver_callbacks

    assert deliver_callbacks() == {"delivered": 1, "failed": 0, "refused": 0}  # the beat task itself
    assert [b["status"] for _, _, b in receiver.received] == ["cancelled"]


def test_hmac_signature_rejects_tampering_and_replay(settings) -> None:  # noqa: ANN001
    body = b'{"id":"r1","status":"completed"}'
    header = callbacks.native_signature("k", body, 1_700_000_000)
    assert callbacks.verify_native_signature("k", header, body, now=1_700_000_010)
    assert not callbacks.verify_native_signature("k", header, body.replace(b"r1", b"r2"), now=1_700_000_010)
    assert not callbacks.verify_native_signature("other", header, body, now=1_700_000_010)
    assert not callbacks.verify_native_signature("k", header, body, now=1_700_000_000 + 3600)  # stale: replay
    assert not callbacks.verify_native_signature("k", "garbage", body)
