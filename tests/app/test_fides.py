"""Fides policy webhook: halt while Lethe unlearns, resume through the outbox when done."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core.config import get_settings
from app.db.models import CallbackDelivery, ErasureRequest, ErasureTarget, FidesResume
from app.services.integrations import callbacks
from app.services.requests import lifecycle

HEADERS = {"reply-to": "/privacy-request/pri_1/resume", "reply-to-token": "jwe-token-abc"}


def _hook(client: TestClient, headers: dict, **body) -> dict:  # noqa: ANN003
    payload = {"privacy_request_id": "pri_1", "direction": "two_way", "callback_type": "pre",
               "identity": {"email": "someone@example.org", "external_id": "toy-02"}, **body}
    return client.post("/integrations/fides/webhook", json=payload, headers=headers)


def test_two_way_pre_webhook_halts_then_resumes_with_the_token(client: TestClient, admin_headers: dict,
                                                                session: Session, toy_model) -> None:  # noqa: ANN001
    r = _hook(client, {**admin_headers, **HEADERS})
    assert r.status_code == 200, r.text
    assert r.json() == {"halt": True}
    req = session.exec(select(ErasureRequest).where(ErasureRequest.external_id == "pri_1")).one()
    assert req.source == "fides" and req.status == "queued"
    assert _hook(client, {**admin_headers, **HEADERS}).json() == {"halt": True}  # Fides retries: same request
    assert len(session.exec(select(ErasureRequest).where(ErasureRequest.external_id == "pri_1")).all()) == 1
    # The erasure completes (as the worker would mark it): the resume is queued in the outbox.
    for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
        t.status = "done"
        session.add(t)
    req.status = "completed"
    lifecycle._announce(session, req, lifecycle.Transition("complete", "running"))
    session.commit()
    row = session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "fides")).one()
    assert row.url == HEADERS["reply-to"] and json.loads(row.body) == {}
    assert callbacks.signed_headers(row, get_settings())["Authorization"] == "Bearer jwe-token-abc"
    assert session.get(FidesResume, "pri_1").resumed_at is not None
    lifecycle._announce(session, req, lifecycle.Transition("complete", "running"))  # a later status change does not resume twice
    session.commit()
    assert len(session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "fides")).all()) == 1


def test_subject_without_data_is_not_halted(client: TestClient, admin_headers: dict) -> None:
    r = _hook(client, {**admin_headers, **HEADERS}, privacy_request_id="pri_2",
              identity={"external_id": "nobody-here"})
    assert r.json() == {"halt": False}


def test_post_webhooks_and_bad_input(client: TestClient, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    assert _hook(client, admin_headers, callback_type="post").json() == {}
    r = _hook(client, admin_headers, privacy_request_id="pri_3", identity={"email": "x@example.org"})
    assert r.status_code == 422 and r.json()["code"] == "no_usable_identity"
    r = _hook(client, admin_headers, privacy_request_id="pri_4")  # two-way without reply-to headers
    assert r.status_code == 422 and r.json()["code"] == "no_reply_to"
    assert client.post("/integrations/fides/webhook", json={"privacy_request_id": "x"},
                       headers=admin_headers).status_code == 422
    assert client.post("/integrations/fides/webhook", json={}).status_code == 401


def test_identity_fields_accept_fides_value_objects() -> None:
    from app.services.integrations.fides import subject_id_of

    assert subject_id_of({"external_id": {"value": "15", "label": "Customer"}}, "external_id") == "15"
    assert subject_id_of({"user_id": 7}, "external_id,user_id") == "7"
    assert subject_id_of({"email": "a@b"}, "external_id") is None
