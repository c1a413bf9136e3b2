"""API behaviour over a real DB (SQLite and PostgreSQL), rolled back per test."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.db.models import AuditEvent, ErasureTarget, Suppression
from app.serving.holder import UpdateListener
from tests.conftest import make_key

PROBLEM = "application/problem+json"
TRAIN_SUBJECT = "toy-02"  # i % 5 == 2: a training subject of the toy data set


def test_missing_key_is_401_problem(client: TestClient) -> None:
    r = client.post("/v1/erasure-requests", json={"subject_id": "x"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "missing_api_key"
    assert client.get("/v1/audit/events", headers={"Authorization": "Bearer nope"}).json()["code"] == "invalid_api_key"


def test_wrong_scope_is_403(client: TestClient, session: Session) -> None:
    reader = {"Authorization": f"Bearer {make_key(session, ['erasure:read'])}"}
    r = client.post("/v1/erasure-requests", json={"subject_id": "x"}, headers=reader)
    assert r.status_code == 403 and r.json()["code"] == "insufficient_scope"
    assert client.get("/v1/audit/verify", headers=reader).status_code == 403


def test_validation_errors_are_problem_json_without_input_echo(client: TestClient, admin_headers: dict) -> None:
    for body in ({}, {"subject_id": ""}, {"subject_id": "a", "extra": 1}, {"subject_id": 5}):
        r = client.post("/v1/erasure-requests", json=body, headers=admin_headers)
        assert r.status_code == 422, body
        assert r.headers["content-type"].startswith(PROBLEM)
        problem = r.json()
        assert problem["status"] == 422 and problem["errors"]
        assert all("input" not in e for e in problem["errors"])
    r = client.post("/v1/erasure-requests", content=b"{not json", headers={**admin_headers,
                                                                          "content-type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/erasure-requests", json={"subject_id": "a", "policy": "magic"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["code"] == "unknown_policy"


def test_unknown_things_are_404_problem(client: TestClient, admin_headers: dict) -> None:
    assert client.get("/v1/erasure-requests/nope", headers=admin_headers).json()["code"] == "not_found"
    assert client.get("/v1/models/nope", headers=admin_headers).status_code == 404
    assert client.get("/v1/no-such-route").headers["content-type"].startswith(PROBLEM)


def test_subject_without_data_completes_as_no_data(client: TestClient, admin_headers: dict) -> None:
    r = client.post("/v1/erasure-requests", json={"subject_id": "nobody"}, headers=admin_headers)
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "no_data" and body["percent"] == 100 and body["models"] == []
    assert body["due_at"] > body["received_at"]
    assert r.headers["location"].endswith(body["id"])


def test_idempotency_key_returns_same_request(client: TestClient, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    h = {**admin_headers, "Idempotency-Key": "k-1"}
    a = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT}, headers=h)
    b = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT}, headers=h)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    assert b.headers.get("idempotent-replayed") == "true"
    c = client.post("/v1/erasure-requests", json={"subject_id": "toy-03"}, headers=h)
    assert c.status_code == 409 and c.json()["code"] == "idempotency_key_reused"


def test_erasure_is_queued_suppressed_and_audited(client: TestClient, admin_headers: dict, session: Session,
                                                  toy_model, settings) -> None:  # noqa: ANN001
    r = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT, "reason": "Art. 17"},
                    headers=admin_headers)
    body = r.json()
    assert body["status"] == "queued" and body["models"] == [{"model": "toy", "status": "queued", "job_id": None, "attempts": 0, "not_before": None}]
    targets = session.exec(select(ErasureTarget).where(ErasureTarget.request_id == body["id"])).all()
    assert [t.model_name for t in targets] == ["toy"]
    assert session.get(Suppression, body["subject_key"]) is not None
    # Re-ingesting the subject is refused.
    r = client.post(f"/v1/subjects/{TRAIN_SUBJECT}/samples", headers=admin_headers,
                    json={"model": "toy", "samples": [{"features": {"x": [0.0] * 16}, "label": 0}]})
    assert r.status_code == 409 and r.json()["code"] == "subject_suppressed"
    # The audit log names the request, pseudonymises the subject and never stores the raw ID.
    events = client.get("/v1/audit/events", params={"request_id": body["id"]}, headers=admin_headers).json()
    assert [e["type"] for e in events["items"]] == ["erasure_requested", "erasure_queued"]
    assert all(e["subject_key"] == body["subject_key"] != TRAIN_SUBJECT for e in events["items"])
    by_subject = client.get("/v1/audit/events", params={"subject_id": TRAIN_SUBJECT}, headers=admin_headers).json()
    assert {e["request_id"] for e in by_subject["items"]} == {body["id"]}
    raw = " ".join(str(e.payload) + str(e.subject_key) for e in session.exec(select(AuditEvent)).all())
    assert TRAIN_SUBJECT not in raw


def test_ingest_validates_samples(client: TestClient, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    ok = client.post("/v1/subjects/new-person/samples", headers=admin_headers,
                     json={"model": "toy", "samples": [{"features": {"x": [0.1] * 16}, "label": 1}]})
    assert ok.status_code == 201 and ok.json()["ingested"] == 1
    bad = client.post("/v1/subjects/new-person/samples", headers=admin_headers,
                      json={"model": "toy", "samples": [{"features": {"x": [0.1] * 3}, "label": 1}]})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_sample"
    info = client.get("/v1/subjects/new-person", headers=admin_headers).json()
    assert info["samples"] == {"toy": {"train": 1}} and info["suppressed"] is False


def test_cancel_only_while_queued(client: TestClient, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    rid = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT}, headers=admin_headers).json()["id"]
    r = client.delete(f"/v1/erasure-requests/{rid}", headers=admin_headers)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert client.delete(f"/v1/erasure-requests/{rid}", headers=admin_headers).status_code == 409


def test_audit_pagination_and_tamper_detection(client: TestClient, admin_headers: dict, session: Session) -> None:
    for i in range(5):
        client.post("/v1/erasure-requests", json={"subject_id": f"nobody-{i}"}, headers=admin_headers)
    seen, cursor = [], None
    while True:
        page = client.get("/v1/audit/events", params={"limit": 3, **({"cursor": cursor} if cursor else {})},
                          headers=admin_headers).json()
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(seen)) and len(seen) == 10
    assert client.get("/v1/audit/verify", headers=admin_headers).json()["ok"] is True
    ev = session.exec(select(AuditEvent).where(AuditEvent.seq == 4)).one()
    ev.payload = {**ev.payload, "status": "completed"}
    session.add(ev)
    session.commit()
    report = client.get("/v1/audit/verify", headers=admin_headers).json()
    assert report["ok"] is False and report["first_broken_seq"] == 4


def test_predict_serves_loaded_version(app, client: TestClient, admin_headers: dict, toy_model, settings) -> None:  # noqa: ANN001
    r = client.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.0] * 16}]}, headers=admin_headers)
    assert r.status_code == 503 and r.json()["code"] in ("serving_disabled", "model_not_ready")
    listener = UpdateListener(app.state.holder, settings)
    app.state.listener = listener
    assert listener.sync_once() == ["toy"]
    r = client.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.0] * 16}, {"x": [1.0] * 16}]},
                    headers=admin_headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == 1 and r.headers["x-model-version"] == "1"
    assert len(body["predictions"]) == 2
    assert all(0 <= p["label"] < 4 and 0.25 <= p["probability"] <= 1 for p in body["predictions"])
    bad = client.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.0] * 2}]}, headers=admin_headers)
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_input"
    desc = client.get("/v1/models/toy", headers=admin_headers).json()
    assert desc["serving_version"] == 1 and desc["input_example"] == {"x": [0.0] * 16}
    assert [v["version"] for v in desc["versions"]] == [1]


def test_deadline_extension_once_within_the_first_month(client: TestClient, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    body = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT}, headers=admin_headers).json()
    reason = {"reason": "Retraining backlog after a model migration; notified the subject on day 3."}
    short = client.post(f"/v1/erasure-requests/{body['id']}/extend", json={"reason": "x"}, headers=admin_headers)
    assert short.status_code == 422
    r = client.post(f"/v1/erasure-requests/{body['id']}/extend", json=reason, headers=admin_headers)
    assert r.status_code == 200, r.text
    extended = r.json()
    assert extended["extended"] is True and extended["due_at"] > body["due_at"]
    again = client.post(f"/v1/erasure-requests/{body['id']}/extend", json=reason, headers=admin_headers)
    assert again.status_code == 409 and again.json()["code"] == "already_extended"
    done = client.post("/v1/erasure-requests", json={"subject_id": "nobody"}, headers=admin_headers).json()
    closed = client.post(f"/v1/erasure-requests/{done['id']}/extend", json=reason, headers=admin_headers)
    assert closed.status_code == 409 and closed.json()["code"] == "not_extendable"
    events = client.get("/v1/audit/events", params={"request_id": body["id"], "type": "deadline_extended"},
                        headers=admin_headers).json()["items"]
    assert len(events) == 1 and events[0]["payload"]["reason"] == reason["reason"]


def test_identity_verification_pauses_the_clock_and_erases_nothing_until_confirmed(
        client: TestClient, admin_headers: dict, session: Session, settings, toy_model) -> None:  # noqa: ANN001
    from datetime import timedelta

    from app.core.security import subject_key
    from app.db.models import ErasureRequest

    body = {"subject_id": TRAIN_SUBJECT, "identity_verified": False}
    pending = client.post("/v1/erasure-requests", json=body, headers=admin_headers).json()
    assert (pending["status"], pending["identity"], pending["clock_paused"]) == ("awaiting_identity", "pending", True)
    assert pending["models"] == []  # nothing is touched before the subject is confirmed
    key = subject_key(settings.subject_key_secret, TRAIN_SUBJECT)
    assert session.get(Suppression, key) is None
    # Three days pass while the controller checks the subject's identity.
    req = session.get(ErasureRequest, pending["id"])
    req.clock_paused_at -= timedelta(days=3)
    session.add(req)
    session.commit()
    r = client.post(f"/v1/erasure-requests/{pending['id']}/identity", json={"verified": True, "note": "ID checked"},
                    headers=admin_headers)
    assert r.status_code == 200, r.text
    resumed = r.json()
    assert (resumed["status"], resumed["identity"], resumed["clock_paused"]) == ("queued", "verified", False)
    assert [m["model"] for m in resumed["models"]] == ["toy"]
    assert 3 * 86400 <= resumed["clock_paused_s"] < 3 * 86400 + 60
    session.expire_all()
    req = session.get(ErasureRequest, pending["id"])
    from app.services.requests.erasure import add_one_month

    assert abs((req.due_at - add_one_month(req.received_at)).total_seconds() - req.clock_paused_s) < 1
    assert session.get(Suppression, key) is not None
    again = client.post(f"/v1/erasure-requests/{pending['id']}/identity", json={"verified": True},
                        headers=admin_headers)
    assert again.status_code == 409 and again.json()["code"] == "not_awaiting_identity"
    types = [e["type"] for e in client.get("/v1/audit/events", params={"request_id": pending["id"]},
                                           headers=admin_headers).json()["items"]]
    assert types == ["erasure_requested", "clock_paused", "identity_verified", "erasure_admitted", "erasure_queued"]


def test_unverified_identity_rejects_and_cancel_works_while_paused(client: TestClient, admin_headers: dict,
                                                                    session: Session, toy_model) -> None:  # noqa: ANN001
    body = {"subject_id": "toy-07", "identity_verified": False}
    first = client.post("/v1/erasure-requests", json=body, headers=admin_headers).json()
    r = client.post(f"/v1/erasure-requests/{first['id']}/identity", json={"verified": False}, headers=admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "rejected" and r.json()["identity"] == "rejected"
    assert "nothing was erased" in r.json()["error"]
    assert session.exec(select(Suppression)).all() == [] and session.exec(select(ErasureTarget)).all() == []
    second = client.post("/v1/erasure-requests", json=body, headers=admin_headers).json()
    overdue = client.get("/v1/erasure-requests", params={"overdue": True}, headers=admin_headers).json()["items"]
    assert second["id"] not in [i["id"] for i in overdue]
    from datetime import timedelta

    from app.db.models import utcnow
    from app.services.requests import deadlines

    # A paused clock is in no deadline bucket (the gauge), even long past the provisional due date.
    assert sum(deadlines.open_by_bucket(session, now=utcnow() + timedelta(days=90)).values()) == 0
    cancelled = client.delete(f"/v1/erasure-requests/{second['id']}", headers=admin_headers)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    bad = client.post(f"/v1/erasure-requests/{second['id']}/identity", json={"verified": "maybe"},
                      headers=admin_headers)
    assert bad.status_code == 422


def test_month_arithmetic_clamps_to_the_last_day() -> None:
    from datetime import datetime

    from app.services.requests.erasure import add_months

    assert add_months(datetime(2026, 1, 31), 1) == datetime(2026, 2, 28)
    assert add_months(datetime(2028, 1, 31), 1) == datetime(2028, 2, 29)
    assert add_months(datetime(2026, 11, 30), 3) == datetime(2027, 2, 28)
    assert add_months(datetime(2026, 12, 15), 1) == datetime(2027, 1, 15)


def test_recipients_are_kept_per_model(client: TestClient, admin_headers: dict, session: Session, toy_model) -> None:  # noqa: ANN001
    body = {"recipients": [{"name": "edge-fleet", "callback_url": "https://edge.example.org/art19"}]}
    r = client.put("/v1/models/toy/recipients", json=body, headers=admin_headers)
    assert r.status_code == 200, r.text
    assert client.get("/v1/models/toy", headers=admin_headers).json()["recipients"][0]["name"] == "edge-fleet"
    predictor = {"Authorization": f"Bearer {make_key(session, ['predict'])}"}
    assert client.put("/v1/models/toy/recipients", json=body, headers=predictor).status_code == 403
    bad = client.put("/v1/models/toy/recipients", json={"recipients": [{"name": ""}]}, headers=admin_headers)
    assert bad.status_code == 422


def test_metrics_expose_time_to_forget_and_deadlines(client: TestClient, admin_headers: dict, session: Session,
                                                     toy_model) -> None:  # noqa: ANN001
    from app.db.models import ErasureRequest, utcnow

    rid = client.post("/v1/erasure-requests", json={"subject_id": TRAIN_SUBJECT}, headers=admin_headers).json()["id"]
    req = session.get(ErasureRequest, rid)
    req.status, req.completed_at, req.result = "completed", utcnow(), {"time_to_forget_s": 42.0}
    session.add(req)
    session.commit()
    text = client.get("/metrics").text
    # The 30-day view reads completed rows; the histogram itself is observed by the completion
    # transition (tests/app/test_metrics.py), which this shortcut skips.
    assert 'lethe_time_to_forget_30d_seconds{quantile="0.5"} 42.0' in text
    assert "lethe_completed_erasure_requests_30d 1.0" in text
    assert "# TYPE lethe_time_to_forget_seconds histogram" in text
    assert 'lethe_open_erasure_requests{days_to_due="14+"}' in text


def test_request_list_rejects_unknown_filters_and_stale_cursors(client: TestClient, admin_headers: dict) -> None:
    for i in range(3):
        client.post("/v1/erasure-requests", json={"subject_id": f"nobody-{i}"}, headers=admin_headers)
    done = client.get("/v1/erasure-requests", params={"status": "no_data", "source": "api"}, headers=admin_headers)
    assert done.status_code == 200 and len(done.json()["items"]) == 3
    for params in ({"status": "complete"}, {"source": "email"}):  # a typo must not list everything
        r = client.get("/v1/erasure-requests", params=params, headers=admin_headers)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    r = client.get("/v1/erasure-requests", params={"cursor": "no-such-request"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"
    first = client.get("/v1/erasure-requests", params={"limit": 2}, headers=admin_headers).json()
    rest = client.get("/v1/erasure-requests", params={"limit": 2, "cursor": first["next_cursor"]},
                      headers=admin_headers).json()
    assert len(first["items"]) == 2 and len(rest["items"]) == 1
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in rest["items"]}


def test_policy_names_come_from_the_method_registry(client: TestClient, admin_headers: dict) -> None:
    from app.api.routes.erasure_requests import KNOWN_POLICIES
    from workers.unlearning import METHODS

    assert set(KNOWN_POLICIES) == {"auto", *METHODS}
    r = client.post("/v1/erasure-requests", json={"subject_id": "x", "policy": "forget_harder"}, headers=admin_headers)
    assert r.status_code == 422 and r.json()["code"] == "unknown_policy"


def test_a_nul_character_in_input_is_a_4xx_problem_on_every_backend(client, admin_headers) -> None:  # noqa: ANN001
    # QA: on PostgreSQL a NUL in a path, query or body string reached psycopg ("PostgreSQL text
    # fields cannot contain NUL (0x00) bytes") and answered a 500; SQLite answered a 404 or stored it.
    calls = [("get", "/v1/models/toy%00", None), ("post", "/v1/models/toy%00/exact-now", None),
             ("get", "/v1/models/toy%00/publish", None), ("get", "/v1/erasure-requests?external_id=%00", None),
             ("get", "/v1/erasure-requests/abc%00", None),
             ("post", "/v1/erasure-requests", {"subject_id": "nul-subject", "reason": "nul \x00 reason"})]
    for method, path, body in calls:
        r = getattr(client, method)(path, headers=admin_headers, **({"json": body} if body else {}))
        assert r.status_code < 500, (path, r.status_code, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"].startswith("application/problem+json"), path
