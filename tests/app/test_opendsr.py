"""OpenDSR family, acting as a controller would: every field list checked against the spec
(opengdpr/OpenDSR ``specification.md`` v1.0 and ``OpenGDPR_specification.md`` v0.1.x),
signatures checked against the published processor certificate, for all three dialects."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core.security import subject_key
from app.core.signing import verify_rsa
from app.db.models import AuditEvent, CallbackDelivery, ErasureRequest, Model, OpenDsrRequest, Sample
from app.services.integrations import callbacks
from tests.conftest import make_key

DIALECTS = {  # name: (requests path, discovery/status base, header prefix, api_version)
    "opengdpr": ("/opendsr/v1/opengdpr_requests", "/opendsr/v1", "X-OpenGDPR", "0.1"),
    "opendsr": ("/opendsr/v2/requests", "/opendsr/v2", "X-OpenDSR", "2.0"),
    "opencompliance": ("/opendsr/opencompliance_requests", "/opendsr", "X-OpenCompliance", "1.0"),
}
# Spec field lists: (required, optional).
DISCOVERY = ({"api_version", "supported_identities", "supported_subject_request_types", "processor_certificate"}, set())
CREATED = ({"controller_id", "expected_completion_time", "received_time", "encoded_request", "subject_request_id",
            "processor_signature"}, set())
STATUS = ({"controller_id", "expected_completion_time", "subject_request_id", "request_status"},
          {"api_version", "results_url", "results_count"})
CANCELLED = ({"controller_id", "received_time", "subject_request_id", "processor_signature"},
             {"api_version", "encoded_request"})
CALLBACK = ({"controller_id", "status_callback_url", "subject_request_id", "request_status",
             "expected_completion_time"}, {"results_url", "results_count"})
REQUEST_STATUSES = {"pending", "in_progress", "completed", "cancelled"}
HELD = "subject-with-data"


def fields_ok(body: dict, spec: tuple[set, set]) -> None:
    required, optional = spec
    assert required <= body.keys(), required - body.keys()
    assert body.keys() <= required | optional, body.keys() - required - optional


def rfc3339(value: str) -> datetime:
    assert value.endswith("Z") or value[-6] in "+-", value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_request(kind: str = "erasure", subject: str = HELD, **extra) -> dict:
    return {"regulation": "gdpr", "subject_request_id": str(uuid.uuid4()), "subject_request_type": kind,
            "submitted_time": "2024-05-01T10:00:00Z", "api_version": "1.0",
            "subject_identities": [{"identity_type": "email", "identity_value": "x@example.com",
                                    "identity_format": "raw"},
                                   {"identity_type": "controller_customer_id", "identity_value": subject,
                                    "identity_format": "raw"}],
            "status_callback_urls": ["https://controller.example/callbacks"], **extra}


@pytest.fixture
def held(session: Session, settings) -> str:  # noqa: ANN001
    """A subject with two training samples in a (model-less) registry entry."""
    session.add(Model(name="mini"))
    key = subject_key(settings.subject_key_secret, HELD)
    session.add_all([Sample(model_name="mini", subject_key=key, split="train", features={"x": [0.0]}, label=0)
                     for _ in range(2)])
    session.commit()
    return key


@pytest.fixture
def controller(session: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(session, ['erasure:write', 'erasure:read'], 'controller')}"}


def check_signed(client: TestClient, r, prefix: str) -> None:  # noqa: ANN001
    """Spec 8.8: verify the raw body against the certificate from /discovery, before parsing it."""
    cert = client.get("/opendsr/cert.pem").content
    assert r.headers[f"{prefix}-Processor-Domain"] == "127.0.0.1"
    assert verify_rsa(cert, r.content, r.headers[f"{prefix}-Signature"])
    assert not verify_rsa(cert, r.content + b" ", r.headers[f"{prefix}-Signature"])
    body = r.json()
    if "processor_signature" in body:
        unsigned = {k: v for k, v in body.items() if k != "processor_signature"}
        assert verify_rsa(cert, callbacks.dumps(unsigned).encode(), body["processor_signature"])


def check_error(r, status: int, reason: str | None = None, secret: str = HELD) -> dict:  # noqa: ANN001
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str)
    assert err["errors"] and all({"domain", "reason", "message"} <= e.keys() for e in err["errors"])
    if reason:
        assert reason in {e["reason"] for e in err["errors"]}, err
    assert secret not in r.text and "x@example.com" not in r.text  # no identity data (spec 7.6)
    return err


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_discovery_status_and_certificate(client: TestClient, dialect: str) -> None:
    path, base, prefix, version = DIALECTS[dialect]
    r = client.get(f"{base}/discovery")
    assert r.status_code == 200
    body = r.json()
    fields_ok(body, DISCOVERY)
    assert body["api_version"] == version
    assert {"identity_type": "controller_customer_id", "identity_format": "raw"} in body["supported_identities"]
    assert all(i.keys() == {"identity_type", "identity_format"} for i in body["supported_identities"])
    assert set(body["supported_subject_request_types"]) == {"erasure", "access"}
    cert_url = body["processor_certificate"]
    assert cert_url.endswith("/opendsr/cert.pem")
    assert client.get("/opendsr/cert.pem").content.startswith(b"-----BEGIN CERTIFICATE-----")
    check_signed(client, r, prefix)
    status = client.get(f"{base}/status")
    assert status.status_code == 200 and status.json()["api_version"] == version
    check_signed(client, status, prefix)


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_erasure_lifecycle(client: TestClient, session: Session, held: str, controller: dict, dialect: str) -> None:
    path, _, prefix, _ = DIALECTS[dialect]
    req = new_request()
    raw = json.dumps(req).encode()
    r = client.post(path, content=raw, headers={**controller, "Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    created = r.json()
    fields_ok(created, CREATED)
    assert created["subject_request_id"] == req["subject_request_id"]
    assert base64.b64decode(created["encoded_request"]) == raw
    assert rfc3339(created["expected_completion_time"]) > rfc3339(created["received_time"])
    check_signed(client, r, prefix)
    # Intake went through the native service: pseudonymised, linked, queued; no identity stored in clear.
    row = session.get(OpenDsrRequest, req["subject_request_id"])
    erq = session.get(ErasureRequest, row.erasure_request_id)
    assert (erq.source, erq.external_id, erq.subject_key, erq.status) == ("opendsr", req["subject_request_id"],
                                                                          held, "queued")
    stored = json.dumps(row.model_dump(), default=str) + str([e.payload for e in session.exec(select(AuditEvent))])
    assert HELD not in stored and "x@example.com" not in stored
    # Status (section 8): pending while queued.
    status = client.get(f"{path}/{req['subject_request_id']}", headers=controller)
    assert status.status_code == 200
    fields_ok(status.json(), STATUS)
    assert status.json()["request_status"] == "pending"
    check_signed(client, status, prefix)
    # A duplicate while in progress is a 409 in the spec's error format.
    check_error(client.post(path, content=raw, headers=controller), 409, "DuplicateRequest")
    # Another controller cannot see it.
    other = {"Authorization": f"Bearer {make_key(session, ['erasure:read'], 'other')}"}
    check_error(client.get(f"{path}/{req['subject_request_id']}", headers=other), 404)
    # Cancel while pending (section 9): 202, signed; then the status is cancelled and a second cancel fails.
    c = client.delete(f"{path}/{req['subject_request_id']}", headers=controller)
    assert c.status_code == 202, c.text
    fields_ok(c.json(), CANCELLED)
    assert ("encoded_request" in c.json()) == (dialect == "opengdpr")
    check_signed(client, c, prefix)
    after = client.get(f"{path}/{req['subject_request_id']}", headers=controller).json()
    assert after["request_status"] == "cancelled"
    check_error(client.delete(f"{path}/{req['subject_request_id']}", headers=controller), 409)
    # Every spec-level status change queued one signed callback per URL, in the spec's shape.
    rows = session.exec(select(CallbackDelivery).where(CallbackDelivery.request_id == erq.id)
                        .order_by(CallbackDelivery.id)).all()
    assert [json.loads(x.body)["request_status"] for x in rows] == ["pending", "cancelled"]
    assert all(x.kind == "opendsr" and x.dialect == dialect for x in rows)
    for x in rows:
        body = json.loads(x.body)
        fields_ok(body, CALLBACK)
        assert body["status_callback_url"] == x.url == req["status_callback_urls"][0]
        assert body["request_status"] in REQUEST_STATUSES


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_subject_without_data_completes_with_results_url(client: TestClient, controller: dict, dialect: str) -> None:
    path, _, prefix, _ = DIALECTS[dialect]
    req = new_request(subject="nobody-here")
    assert client.post(path, json=req, headers=controller).status_code == 201
    status = client.get(f"{path}/{req['subject_request_id']}", headers=controller).json()
    fields_ok(status, STATUS)
    assert status["request_status"] == "completed"
    assert "/v1/erasure-requests/" in status["results_url"] and status["results_url"].endswith("/certificate")


@pytest.mark.parametrize("dialect", ["opengdpr", "opencompliance"])
def test_access_request_answers_from_registry(client: TestClient, held: str, controller: dict, dialect: str) -> None:
    path, _, prefix, _ = DIALECTS[dialect]
    req = new_request("access")
    r = client.post(path, json=req, headers=controller)
    assert r.status_code == 201, r.text
    fields_ok(r.json(), CREATED)
    status = client.get(f"{path}/{req['subject_request_id']}", headers=controller).json()
    fields_ok(status, STATUS)
    assert status["request_status"] == "completed"
    assert ("results_count" in status) == (dialect != "opengdpr")  # results_count arrived with v1.0
    results = client.get(status["results_url"].replace("http://127.0.0.1:8000", ""), headers=controller)
    assert results.status_code == 200
    assert results.json()["samples"] == {"mini": {"train": 2}} and results.json()["subject_key"] == held
    check_error(client.delete(f"{path}/{req['subject_request_id']}", headers=controller), 409)


def test_alias_with_major_version(client: TestClient, controller: dict) -> None:
    """Spec 3.4: OpenCompliance 1.0 is also served at /opendsr/v1/opencompliance_requests."""
    req = new_request(subject="nobody-alias")
    r = client.post("/opendsr/v1/opencompliance_requests", json=req, headers=controller)
    assert r.status_code == 201 and "X-OpenCompliance-Signature" in r.headers
    assert client.get(f"/opendsr/opencompliance_requests/{req['subject_request_id']}",
                      headers=controller).status_code == 200


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_errors_use_spec_error_object_without_identities(client: TestClient, controller: dict, dialect: str) -> None:
    path = DIALECTS[dialect][0]
    post = lambda body: client.post(path, json=body, headers=controller)  # noqa: E731
    base = new_request()
    check_error(client.post(path, content=b"{nope", headers={**controller, "Content-Type": "application/json"}),
                400, "InvalidJson")
    missing = {k: v for k, v in base.items() if k != "subject_request_id"}
    err = check_error(post(missing), 400, "missing")
    assert "subject_request_id" in err["message"]
    check_error(post({**base, "subject_request_id": str(uuid.uuid1())}), 400, "IllegalArgumentException")
    check_error(post({**base, "subject_request_id": str(uuid.uuid4()).upper()}), 400, "IllegalArgumentException")
    check_error(post({**base, "submitted_time": "yesterday"}), 400)
    check_error(post({**base, "submitted_time": "2024-05-01T10:00:00"}), 400)  # RFC 3339 needs an offset
    check_error(post({**base, "subject_request_type": "portability"}), 400, "UnsupportedRequestType")
    only_email = {**base, "subject_identities": base["subject_identities"][:1]}
    check_error(post(only_email), 400, "UnsupportedIdentity")
    hashed = {**base, "subject_identities": [{"identity_type": "controller_customer_id", "identity_format": "sha256",
                                              "identity_value": "ab" * 32}]}
    check_error(post(hashed), 400, "UnsupportedIdentityFormat")
    two = {**base, "subject_identities": base["subject_identities"] + [
        {"identity_type": "controller_customer_id", "identity_value": "someone-else", "identity_format": "raw"}]}
    check_error(post(two), 400, "AmbiguousIdentity")
    check_error(post({**base, "status_callback_urls": ["not a url"]}), 400)
    no_reg = {k: v for k, v in base.items() if k != "regulation"}
    if dialect == "opengdpr":  # v0.1 has no regulation field
        assert post(no_reg).status_code == 201
    else:
        check_error(post(no_reg), 400, "IllegalArgumentException")
    # Auth errors on these routes use the same object.
    check_error(client.post(path, json=base), 401, "missing_api_key")
    check_error(client.get(f"{path}/{uuid.uuid4()}", headers=controller), 404)


def test_wrong_scope_is_403_in_spec_format(client: TestClient, session: Session) -> None:
    reader = {"Authorization": f"Bearer {make_key(session, ['erasure:read'])}"}
    check_error(client.post("/opendsr/v2/requests", json=new_request(), headers=reader), 403, "insufficient_scope")


def test_wrong_method_is_405_in_spec_format(client: TestClient) -> None:
    # The router raises this one, outside the route's handler; the rest of the API keeps problem+json.
    r = client.put("/opendsr/v2/requests")
    check_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert client.put("/v1/keys").headers["content-type"].startswith("application/problem+json")


def test_operators_list_requests_by_dialect(client: TestClient, controller: dict, admin_headers: dict) -> None:
    ids = {}
    for dialect in ("opengdpr", "opencompliance"):
        req = new_request(subject=f"nobody-{dialect}")
        assert client.post(DIALECTS[dialect][0], json=req, headers=controller).status_code == 201
        ids[dialect] = req["subject_request_id"]
    client.post("/v1/erasure-requests", json={"subject_id": "nobody-native"}, headers=admin_headers)
    listed = {}
    for dialect in ("opengdpr", "opencompliance", "opendsr"):
        r = client.get("/v1/erasure-requests", params={"dialect": dialect}, headers=admin_headers)
        assert r.status_code == 200
        listed[dialect] = r.json()["items"]
    assert len(listed["opengdpr"]) == len(listed["opencompliance"]) == 1 and listed["opendsr"] == []
    assert listed["opengdpr"][0]["id"] != listed["opencompliance"][0]["id"]
    assert all(i["source"] == "opendsr" for i in listed["opengdpr"] + listed["opencompliance"])
    assert len(client.get("/v1/erasure-requests", headers=admin_headers).json()["items"]) == 3
    bad = client.get("/v1/erasure-requests", params={"dialect": "opendsr3"}, headers=admin_headers)
    assert bad.status_code == 422
