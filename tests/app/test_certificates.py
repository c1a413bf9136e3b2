"""Erasure certificates: 409 until completed, then a signed document that a third party can check
with the published key; one changed byte breaks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from app.cli import main as cli_main
from app.core.security import subject_key
from app.db.models import ErasureRequest, Model, ModelVersion, Sample, utcnow
from app.services import audit
from app.services.requests.certificates import verify_certificate_file

SUBJECT = "certified-subject"
REPORT = {"test": "rank", "forget_auc": 0.51, "reference_auc": 0.5, "passed": True}


@pytest.fixture
def completed(client: TestClient, session: Session, admin_headers: dict, settings) -> ErasureRequest:  # noqa: ANN001
    """A request taken through the states the pipeline would write (versions, attempts, audit)."""
    session.add(Model(name="mini", serving_version=2))
    for n, sha in ((1, "a" * 64), (2, "b" * 64)):
        session.add(ModelVersion(model_name="mini", number=n, parent=n - 1 or None, artifact_path=f"/x/{n}",
                                 sha256=sha, method="train" if n == 1 else "finetune", state="serving"))
    session.add(Sample(model_name="mini", subject_key=subject_key(settings.subject_key_secret, SUBJECT),
                       split="train", features={"x": [0.0]}, label=0))
    session.commit()
    rid = client.post("/v1/erasure-requests", json={"subject_id": SUBJECT}, headers=admin_headers).json()["id"]
    assert client.get(f"/v1/erasure-requests/{rid}/certificate", headers=admin_headers).status_code == 409
    req = session.get(ErasureRequest, rid)
    req.status, req.completed_at = "completed", utcnow()
    req.result = {"models": {"mini": {"job_id": "job-1", "version_before": 1, "version_after": 2, "method": "finetune",
                                      "attempts": [{"method": "ssd", "passed": False, "report": {"passed": False}},
                                                   {"method": "finetune", "passed": True, "report": REPORT}]}}}
    session.add(req)
    audit.append(session, type="erasure_completed", actor="worker", request_id=rid, subject_key=req.subject_key)
    session.commit()
    return req


def test_certificate_round_trip_and_tamper(client: TestClient, session: Session, admin_headers: dict,
                                           completed: ErasureRequest, tmp_path: Path) -> None:
    r = client.get(f"/v1/erasure-requests/{completed.id}/certificate", headers=admin_headers)
    assert r.status_code == 200, r.text
    doc = r.json()
    cert = doc["certificate"]
    assert cert["request_id"] == completed.id and cert["subject_key"] == completed.subject_key
    assert SUBJECT not in r.text
    (model,) = cert["models"]
    assert model["version_before"]["sha256"] == "a" * 64 and model["version_after"]["sha256"] == "b" * 64
    assert model["methods_tried"] == ["ssd", "finetune"] and model["verification"][1]["report"] == REPORT
    head = audit.head(session)
    assert cert["audit_chain_head"] == {"seq": head["size"], "hash": head["hash"]}
    key = client.get("/v1/keys/certificate").json()  # public, no key needed
    assert key["alg"] == "Ed25519" and key["key_id"] == doc["signature"]["key_id"]
    path = tmp_path / "cert.json"
    path.write_bytes(r.content)
    ok, reason = verify_certificate_file(path, key["public_key_pem"])
    assert ok and completed.id in reason
    # Change one byte of content: a hex digit of the "after" artifact hash.
    raw = bytearray(r.content)
    i = raw.index(b"b" * 64)
    raw[i] = ord("c")
    path.write_bytes(bytes(raw))
    ok, reason = verify_certificate_file(path, key["public_key_pem"])
    assert not ok and "signature" in reason
    # Any single changed byte of the file fails (bad JSON or bad signature), sampled across the file.
    for j in range(0, len(r.content), max(1, len(r.content) // 40)):
        raw = bytearray(r.content)
        if chr(raw[j]) in " \n":
            continue
        raw[j] = ord("0") if raw[j] != ord("0") else ord("1")
        path.write_bytes(bytes(raw))
        assert verify_certificate_file(path, key["public_key_pem"])[0] is False, j
    # The CLI checker, with the key from a PEM file.
    path.write_bytes(r.content)
    pem = tmp_path / "key.pem"
    pem.write_text(key["public_key_pem"])
    assert cli_main(["verify-certificate", str(path), "--key", str(pem)]) == 0
    path.write_bytes(r.content.replace(completed.id.encode(), completed.id[::-1].encode()))
    assert cli_main(["verify-certificate", str(path), "--key", str(pem)]) == 1


def test_wrong_key_and_not_a_certificate(client: TestClient, admin_headers: dict, completed: ErasureRequest,
                                         tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    path = tmp_path / "cert.json"
    path.write_bytes(client.get(f"/v1/erasure-requests/{completed.id}/certificate", headers=admin_headers).content)
    assert verify_certificate_file(path, other)[0] is False
    path.write_text(json.dumps({"hello": "world"}))
    assert verify_certificate_file(path, other) == (False, "not a Lethe certificate (need 'certificate' and "
                                                           "'signature' objects)")
    assert client.get("/v1/erasure-requests/nope/certificate", headers=admin_headers).status_code == 404


def test_production_refuses_generated_or_self_signed_keys(tmp_path: Path) -> None:
    from app.core.config import Settings
    from app.core.errors import Unavailable
    from app.core.signing import get_keys

    dev = Settings(data_dir=tmp_path, env="development")
    keys = get_keys(dev)  # embedded default: generated into <data_dir>/keys
    assert keys.generated and (tmp_path / "keys" / "processor-cert.pem").exists()
    prod = dict(data_dir=tmp_path, env="production", subject_key_secret="s", callback_hmac_secret="h")
    with pytest.raises(Unavailable) as exc:
        get_keys(Settings(**prod))  # default paths: generated material
    assert exc.value.code == "signing_keys_missing"
    k = tmp_path / "keys"
    with pytest.raises(Unavailable) as exc:  # provisioned paths, but the certificate is self-signed
        get_keys(Settings(**prod, signing_key_path=k / "ed25519.pem", processor_key_path=k / "processor-rsa.pem",
                          processor_cert_path=k / "processor-cert.pem"))
    assert exc.value.code == "self_signed_certificate"


def test_openapi_lists_the_new_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/opendsr/v1/opengdpr_requests", "/opendsr/v2/requests/{subject_request_id}", "/opendsr/discovery",
              "/opendsr/opencompliance_requests", "/v1/erasure-requests/{request_id}/certificate",
              "/v1/keys/certificate", "/v1/audit/export"):
        assert p in paths, p


def test_a_certificate_naming_a_gone_version_is_sent_as_signed(client: TestClient, session: Session,
                                                                admin_headers: dict, completed: ErasureRequest,
                                                                tmp_path: Path) -> None:
    """A version row that is gone is certified as ``{number, sha256: null}``: the response schema must
    not add its other fields as nulls (the route excludes unset fields), or the signature breaks."""
    completed.result = {"models": {"mini": {**completed.result["models"]["mini"], "version_before": 9}}}
    session.add(completed)
    session.commit()
    r = client.get(f"/v1/erasure-requests/{completed.id}/certificate", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["certificate"]["models"][0]["version_before"] == {"number": 9, "sha256": None}
    path = tmp_path / "cert.json"
    path.write_bytes(r.content)
    ok, reason = verify_certificate_file(path, client.get("/v1/keys/certificate").json()["public_key_pem"])
    assert ok, reason


def test_a_certificate_with_registry_state_is_served_as_signed(client: TestClient, session: Session,
                                                               admin_headers: dict, completed: ErasureRequest,
                                                               tmp_path: Path) -> None:
    """QA: models[].registries (issue 19) was not in the response schema: a 500 for every erasure of a
    model with a publish target."""
    registry = {"mlflow:recs@http://127.0.0.1:5000": {"status": "published", "required": False,
                                                       "registry_version": "3", "lethe_version": 2}}
    completed.result = {"models": {"mini": {**completed.result["models"]["mini"], "registry": registry}}}
    session.add(completed)
    session.commit()
    r = client.get(f"/v1/erasure-requests/{completed.id}/certificate", headers=admin_headers)
    assert r.status_code == 200, r.text
    assert r.json()["certificate"]["models"][0]["registries"] == registry
    path = tmp_path / "cert.json"
    path.write_bytes(r.content)
    ok, reason = verify_certificate_file(path, client.get("/v1/keys/certificate").json()["public_key_pem"])
    assert ok, reason
