"""Callback URLs that point inside the network, end to end through the API and the outbox (issue 17).

Real database, real loopback receiver; names resolve through ``FakeResolver`` and every connection
goes through ``RecordingBackend`` (loopback only, attempts recorded): nothing here can reach an
address outside 127.0.0.1 even if the guard were broken.
"""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app.core import db
from app.core.outbound import Outbound
from app.db.models import AuditEvent, CallbackDelivery, ErasureRequest, Model
from app.services.integrations import callbacks
from tests.app.test_outbound import FakeResolver, Receiver, RecordingBackend

NEW, OLD = "prod-callback-secret-2026-12", "prod-callback-secret-2026-06"


def refused_problem(r, where: str) -> dict:  # noqa: ANN001
    assert r.status_code == 422, r.text
    assert where not in r.text  # says why, never echoes the URL
    return r.json()


def test_loopback_receiver_refused_in_production_delivered_when_allowlisted_and_rebound_name_refused(
        client: TestClient, session: Session, admin_headers: dict, settings,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = Receiver()
    try:
        for name, value in [("env", "production"), ("callback_hmac_secret", NEW),
                            ("callback_hmac_secret_previous", OLD), ("callback_allow_http", True),
                            ("callback_allow", None)]:
            monkeypatch.setattr(settings, name, value)
        loopback = f"http://127.0.0.1:{receiver.port}/native"
        # 1. Production allowlists nothing: the loopback receiver is refused at the door.
        r = client.post("/v1/erasure-requests", headers=admin_headers,
                        json={"subject_id": "guard-a", "callback_url": loopback})
        body = refused_problem(r, loopback)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert (body["code"], body["status"]) == ("callback_url_refused", 422) and "loopback" in body["detail"]
        # 2. A public-looking name is accepted at the door; at delivery it resolves to 127.0.0.1 and is refused.
        rebound = f"http://status.example.com:{receiver.port}/native"
        rid = client.post("/v1/erasure-requests", headers=admin_headers,
                          json={"subject_id": "guard-b", "callback_url": rebound}).json()["id"]
        resolver, backend = FakeResolver({"status.example.com": ["127.0.0.1"]}), RecordingBackend()
        guarded = Outbound.from_settings(settings, resolver=resolver, network_backend=backend)
        counts = callbacks.deliver_due(lambda: db.new_session(), settings=settings, client=guarded)
        assert counts == {"delivered": 0, "failed": 0, "refused": 1}
        assert resolver.lookups == ["status.example.com"] and backend.attempts == [] and receiver.seen == []
        session.expire_all()
        row = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == rid)).one()
        assert row.status == "refused" and "loopback" in row.last_error
        ev = session.exec(select(AuditEvent).where(AuditEvent.type == "callback_refused")).one()
        assert (ev.request_id, ev.payload["host"]) == (rid, "status.example.com")
        assert "loopback" in ev.payload["reason"]
        assert "guard-b" not in json.dumps(ev.payload)
        # Visible on the request; the erasure itself is untouched, and the refusal is never retried.
        shown = client.get(f"/v1/erasure-requests/{rid}/callbacks", headers=admin_headers).json()["items"]
        assert [(c["kind"], c["host"], c["status"]) for c in shown] == [("native", "status.example.com", "refused")]
        assert shown[0]["last_error"].startswith("refused: ")
        assert client.get("/v1/erasure-requests/no-such-request/callbacks", headers=admin_headers).status_code == 404
        req = session.get(ErasureRequest, rid)
        assert (req.status, req.error) == ("no_data", None)
        # 3. The operator allowlists the receiver: accepted and delivered, signed both ways with both secrets.
        monkeypatch.setattr(settings, "callback_allow", "127.0.0.1/32")
        r = client.post("/v1/erasure-requests", headers=admin_headers,
                        json={"subject_id": "guard-c", "callback_url": loopback})
        assert r.status_code == 202, r.text
        guarded = Outbound.from_settings(settings, resolver=resolver, network_backend=backend)
        counts = callbacks.deliver_due(lambda: db.new_session(), settings=settings, client=guarded)
        assert counts == {"delivered": 1, "failed": 0, "refused": 0}
        assert backend.attempts == [("127.0.0.1", receiver.port)] and len(receiver.seen) == 1
        raw, headers = receiver.seen[0]["body"], receiver.seen[0]["headers"]
        assert json.loads(raw)["id"] == r.json()["id"]
        for secret in (NEW, OLD):  # both valid during the rotation
            assert callbacks.verify_native_signature(secret, headers["x-lethe-signature"], raw)
            # An independent implementation (the standardwebhooks package) accepts the Standard Webhooks headers.
            assert Webhook(callbacks.standard_webhooks_secret(secret)).verify(raw, headers)["id"] == r.json()["id"]
        row_id = session.exec(select(CallbackDelivery.id).where(CallbackDelivery.request_id == r.json()["id"])).one()
        assert headers["webhook-id"] == f"msg_lethe_{row_id}"  # the outbox row: the same on every retry
        with pytest.raises(WebhookVerificationError):
            Webhook(callbacks.standard_webhooks_secret("some-other-secret")).verify(raw, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(callbacks.standard_webhooks_secret(NEW)).verify(raw.replace(b"guard", b"GUARD") + b" ", headers)
    finally:
        receiver.close()


def test_internal_urls_are_refused_at_the_door_of_every_api(
        client: TestClient, session: Session, admin_headers: dict) -> None:
    metadata = "http://169.254.169.254/latest/meta-data"
    mapped = "http://[::ffff:169.254.169.254]/latest"
    r = client.post("/v1/erasure-requests", headers=admin_headers,
                    json={"subject_id": "guard-d", "callback_url": mapped})
    body = refused_problem(r, "::ffff")
    assert body["code"] == "callback_url_refused" and "IPv4-mapped" in body["detail"]
    # OpenDSR: the spec's error object, status 422.
    srid = str(uuid.uuid4())
    r = client.post("/opendsr/v2/requests", headers=admin_headers, json={
        "regulation": "gdpr", "subject_request_id": srid, "subject_request_type": "erasure",
        "submitted_time": "2024-05-01T10:00:00Z", "status_callback_urls": ["https://ok.example.com/cb", metadata],
        "subject_identities": [{"identity_type": "controller_customer_id", "identity_value": "guard-e",
                                "identity_format": "raw"}]})
    err = refused_problem(r, metadata)["error"]
    assert err["code"] == 422 and err["errors"][0]["reason"] == "callback_url_refused"
    assert "status_callback_urls.1" in err["message"] and "link-local" in err["message"]
    assert client.get(f"/opendsr/v2/requests/{srid}", headers=admin_headers).status_code == 404  # nothing recorded
    # Art. 19 recipients.
    session.add(Model(name="guarded"))
    session.commit()
    r = client.put("/v1/models/guarded/recipients", headers=admin_headers, json={"recipients": [
        {"name": "partner", "callback_url": "https://partner.example.com/art19"},
        {"name": "internal", "callback_url": "http://10.1.2.3:8080/hook"}]})
    assert refused_problem(r, "10.1.2.3:8080")["code"] == "callback_url_refused"
    assert session.get(Model, "guarded").config.get("recipients") in (None, [])
    assert client.put("/v1/models/guarded/recipients", headers=admin_headers, json={"recipients": [
        {"name": "partner", "callback_url": "https://partner.example.com/art19"}]}).status_code == 200
