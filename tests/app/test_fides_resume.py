"""The Fides resume against a loopback stand-in that answers the way Fides 2.86.2 does (the real server
runs in ``make test-fides``): idempotent resume, expired tokens, refusals, the request view, the list
filter, the audit payloads, the metric, and no token left at rest."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from sqlmodel import Session, select

from app.core import db
from app.core.config import Settings, normalise_fides_url
from app.core.outbound import Outbound
from app.core.security import subject_key
from app.db.models import (AuditEvent, CallbackDelivery, ErasureRequest, ErasureTarget, FidesResume, Model, Sample,
                           utcnow)
from app.services.integrations import callbacks, fides_state
from app.services.requests import lifecycle

TOKEN = "t" * 259  # Fides' reply-to-token is a 259-character JWE


class FakeFides:
    """``POST /api/v1/privacy-request/{id}/resume`` as Fides answers it: the bearer token must match; a
    paused request goes on (``complete``, after ``delay_s`` when eager execution is slow); any other status
    is a 400 naming it; ``expired`` makes every call a 403 ``Webhook token expired``."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.expired, self.delay_s, self.calls = False, 0.0, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers["Content-Length"]))
                fake.calls.append((self.path, self.headers.get("Authorization")))
                parts = self.path.split("/")  # /api/v1/privacy-request/<id>/resume
                pid = parts[4] if len(parts) == 6 and self.path.startswith("/api/v1/privacy-request/") else None
                if pid is None:
                    code, body = 405, {"detail": "Method Not Allowed"}
                elif fake.expired:
                    code, body = 403, {"detail": "Webhook token expired"}
                elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    code, body = 403, {"detail": "Invalid token"}
                elif fake.status.get(pid, "paused") != "paused":
                    code, body = 400, {"detail": f"Invalid resume request: privacy request '{pid}' status = "
                                                 f"{fake.status[pid]}."}
                else:
                    fake.status[pid] = "complete"  # eager mode: the rest runs inside this call
                    time.sleep(fake.delay_s)
                    code, body = 200, {"id": pid, "status": "complete"}
                raw = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:  # the caller timed out and hung up
                    pass

            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake(settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeFides]:  # noqa: ANN001
    f = FakeFides()
    monkeypatch.setattr(settings, "fides_url", normalise_fides_url(f.url))  # a bare host: /api/v1 appended
    yield f
    f.server.shutdown()
    f.server.server_close()


@pytest.fixture
def http(settings) -> Outbound:  # noqa: ANN001
    """The guarded client as housekeeping builds it (tests: loopback admitted, the fake Fides on 127.0.0.1)."""
    return Outbound.from_settings(settings)


def _held(session: Session, settings, subject: str) -> None:  # noqa: ANN001
    if session.get(Model, "mini") is None:
        session.add(Model(name="mini"))
        session.flush()
    session.add(Sample(model_name="mini", subject_key=subject_key(settings.subject_key_secret, subject),
                       split="train", features={"x": [0.0]}, label=0))
    session.commit()


def _halt(client: TestClient, headers: dict, pid: str, subject: str) -> dict:
    r = client.post("/integrations/fides/webhook", headers={
        **headers, "reply-to": f"/privacy-request/{pid}/resume", "reply-to-token": TOKEN},
        json={"privacy_request_id": pid, "direction": "two_way", "callback_type": "pre",
              "privacy_request_status": "paused", "identity": {"email": "p@example.org", "external_id": subject}})
    assert r.status_code == 200, r.text
    return r.json()


def _complete(session: Session, pid: str) -> ErasureRequest:
    """The erasure completes (as the worker marks it): the resume is queued in the outbox."""
    req = session.exec(select(ErasureRequest).where(ErasureRequest.external_id == pid)).one()
    for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
        t.status = "done"
        session.add(t)
    req.status = "completed"
    lifecycle._announce(session, req, lifecycle.Transition("complete", "running"))
    session.commit()
    return req


def _deliver(http: Outbound, settings, now=None) -> dict:  # noqa: ANN001
    return callbacks.deliver_due(lambda: db.new_session(), client=http, settings=settings, now=now)


def _events(session: Session, type: str, request_id: str) -> list[AuditEvent]:
    session.expire_all()
    return list(session.exec(select(AuditEvent).where(AuditEvent.type == type, AuditEvent.request_id == request_id)
                             .order_by(AuditEvent.id)).all())


def _no_token_at_rest(session: Session, pid: str) -> None:
    session.expire_all()
    assert session.get(FidesResume, pid).token is None
    assert all(r.auth_token is None for r in session.exec(select(CallbackDelivery).where(
        CallbackDelivery.kind == "fides")).all())


def test_a_resume_that_timed_out_but_succeeded_ends_as_done_on_fides_400(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides, http: Outbound, settings,
        monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _held(session, settings, "f-1")
    assert _halt(client, admin_headers, "pri_slow", "f-1") == {"halt": True}
    row = session.get(FidesResume, "pri_slow")
    assert row.reply_to == f"{fake.url}/api/v1/privacy-request/pri_slow/resume" and row.state == "halted"
    assert abs((row.token_expires_at.replace(tzinfo=None) - row.created_at.replace(tzinfo=None)).total_seconds()
               - settings.fides_token_ttl_s) < 1
    req = _complete(session, "pri_slow")
    assert session.get(FidesResume, "pri_slow").token is None  # moved into the outbox row
    # Eager execution outlasts the resume timeout: the first attempt fails, yet Fides went on.
    monkeypatch.setattr(settings, "fides_resume_timeout_s", 0.3)
    fake.delay_s = 1.0
    t0 = utcnow()
    assert _deliver(http, settings, t0) == {"delivered": 0, "failed": 1, "refused": 0}
    assert session.get(FidesResume, "pri_slow").state == "resuming"
    fake.delay_s = 0.0
    assert _deliver(http, settings, t0 + timedelta(hours=1)) == {"delivered": 1, "failed": 0, "refused": 0}
    session.expire_all()
    delivery = session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "fides")).one()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 2, None)
    assert [c[1] for c in fake.calls] == [f"Bearer {TOKEN}"] * 2
    done = _events(session, "callback_delivered", req.id)
    assert [(e.payload["http_status"], e.payload["fides_status"], e.payload["privacy_request_id"],
             e.payload["fides_state"]) for e in done] == [(400, "complete", "pri_slow", "resumed")]
    assert TOKEN not in json.dumps([e.payload for e in done])
    _no_token_at_rest(session, "pri_slow")
    assert _deliver(http, settings, t0 + timedelta(days=1)) == {"delivered": 0, "failed": 0, "refused": 0}  # never again
    view = client.get(f"/v1/erasure-requests/{req.id}", headers=admin_headers).json()
    assert view["external_id"] == "pri_slow"
    assert view["fides"] | {"token_expires_at": None} == {
        "privacy_request_id": "pri_slow", "state": "resumed", "token_expires_at": None, "fides_status": "complete",
        "detail": "Invalid resume request: privacy request 'pri_slow' status = complete.", "next_step": None}


def test_a_request_cancelled_in_fides_ends_the_delivery_and_says_so(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides, http: Outbound,
        settings) -> None:  # noqa: ANN001
    _held(session, settings, "f-2")
    _halt(client, admin_headers, "pri_cxl", "f-2")
    fake.status["pri_cxl"] = "canceled"  # Fides' operator cancelled it first
    req = _complete(session, "pri_cxl")
    assert _deliver(http, settings) == {"delivered": 1, "failed": 0, "refused": 0}
    view = client.get(f"/v1/erasure-requests/{req.id}", headers=admin_headers).json()["fides"]
    assert (view["state"], view["fides_status"]) == ("ended_in_fides", "canceled")
    assert "canceled" in view["next_step"]
    _no_token_at_rest(session, "pri_cxl")


def test_an_expired_token_is_given_up_at_once_shown_and_counted(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides, http: Outbound,
        settings) -> None:  # noqa: ANN001
    _held(session, settings, "f-3")
    _halt(client, admin_headers, "pri_exp", "f-3")
    req = _complete(session, "pri_exp")
    fake.expired = True
    assert _deliver(http, settings) == {"delivered": 0, "failed": 1, "refused": 0}
    session.expire_all()
    delivery = session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "fides")).one()
    assert (delivery.status, delivery.attempts) == ("failed", 1)  # no retries of a dead token
    [failed] = _events(session, "callback_failed", req.id)
    assert failed.payload["gave_up"] and failed.payload["fides_state"] == "token_expired"
    _no_token_at_rest(session, "pri_exp")
    view = client.get(f"/v1/erasure-requests/{req.id}", headers=admin_headers).json()
    assert view["status"] == "completed" and view["fides"]["state"] == "token_expired"
    assert view["fides"]["detail"] == "Webhook token expired" and "pri_exp" in view["fides"]["next_step"]
    metrics = {(s.name, tuple(s.labels.items())): s.value
               for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}
    assert metrics[("lethe_fides_requests", (("state", "token_expired"),))] == 1
    # The operator re-runs the request in Fides: it calls the webhook again and is let through.
    assert _halt(client, admin_headers, "pri_exp", "f-3") == {"halt": False}
    session.expire_all()
    assert session.get(FidesResume, "pri_exp").state == "resumed"


def test_tokens_past_their_expiry_are_deleted_and_never_sent(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides, http: Outbound,
        settings) -> None:  # noqa: ANN001
    _held(session, settings, "f-4")
    _halt(client, admin_headers, "pri_old", "f-4")
    metrics = {s.name: s.value for f in text_string_to_metric_families(client.get("/metrics").text)
               for s in f.samples if s.name == "lethe_fides_token_expiry_seconds"}
    assert 0 < metrics["lethe_fides_token_expiry_seconds"] <= settings.fides_token_ttl_s  # LetheFidesTokenExpiringSoon
    later = utcnow() + timedelta(seconds=settings.fides_token_ttl_s + 60)
    assert fides_state.expire_tokens(session, now=later - timedelta(seconds=120)) == []  # not yet
    row = session.get(FidesResume, "pri_old")
    row.token_expires_at = utcnow() - timedelta(seconds=1)  # the housekeeping beat finds it expired
    session.add(row)
    session.commit()
    from workers.housekeeping import check_deadlines

    check_deadlines()
    session.expire_all()
    row = session.get(FidesResume, "pri_old")
    assert (row.state, row.token) == ("token_expired", None)
    req = _complete(session, "pri_old")
    assert _deliver(http, settings) == {"delivered": 0, "failed": 0, "refused": 0} and fake.calls == []
    [expired] = _events(session, "fides_token_expired", req.id)
    assert expired.payload["privacy_request_id"] == "pri_old"


def test_a_wrong_fides_url_is_refused_retried_and_visible(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides, http: Outbound, settings,
        monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(settings, "fides_url", f"{fake.url}/wrong/api/v1")
    _held(session, settings, "f-5")
    _halt(client, admin_headers, "pri_405", "f-5")
    req = _complete(session, "pri_405")
    assert _deliver(http, settings) == {"delivered": 0, "failed": 1, "refused": 0}
    session.expire_all()
    assert session.exec(select(CallbackDelivery).where(CallbackDelivery.kind == "fides")).one().status == "pending"
    fides = client.get(f"/v1/erasure-requests/{req.id}", headers=admin_headers).json()["fides"]
    assert fides["state"] == "resume_refused" and fides["detail"].startswith("HTTP 405")
    assert "LETHE_FIDES_URL" in fides["next_step"]


def test_the_fides_id_in_the_list_filter_and_the_audit(
        client: TestClient, session: Session, admin_headers: dict, fake: FakeFides) -> None:
    _halt(client, admin_headers, "pri_a", "nobody-a")  # no data: halt false, completes at once
    _halt(client, admin_headers, "pri_b", "nobody-b")
    page = client.get("/v1/erasure-requests", params={"external_id": "pri_b"}, headers=admin_headers).json()
    assert [(i["external_id"], i["source"], i["fides"]["state"]) for i in page["items"]] == \
        [("pri_b", "fides", "not_halted")]
    assert client.get("/v1/erasure-requests", params={"external_id": "pri_none"},
                      headers=admin_headers).json()["items"] == []
    rid = page["items"][0]["id"]
    requested = _events(session, "erasure_requested", rid)
    assert requested[0].payload["external_id"] == "pri_b"
    hook = _events(session, "fides_webhook", rid)
    assert hook[0].payload == {"privacy_request_id": "pri_b", "direction": "two_way", "halt": False}
    assert client.get("/v1/erasure-requests", params={"external_id": ""}, headers=admin_headers).status_code == 422


def test_fides_url_is_normalised_or_refused_at_start_up() -> None:
    assert Settings(fides_url="http://127.0.0.1:8080").fides_url == "http://127.0.0.1:8080/api/v1"
    assert Settings(fides_url="https://fides.example.org/api/v1/").fides_url == "https://fides.example.org/api/v1"
    assert Settings(fides_url="https://h/prefix/api/v1").fides_url == "https://h/prefix/api/v1"
    assert Settings(fides_url="").fides_url is None
    for bad in ("http://h:8080/api", "fides.example.org", "ftp://h/api/v1", "http://h/api/v1?x=1"):
        with pytest.raises(ValidationError, match="LETHE_FIDES_URL"):
            Settings(fides_url=bad)


@pytest.mark.parametrize(("code", "body", "expected"), [
    (200, "{}", ("done", "resumed", None)),
    (400, '{"detail":"Invalid resume request: privacy request \'p\' status = complete."}',
     ("done", "resumed", "complete")),
    (400, '{"detail":"Invalid resume request: privacy request \'p\' status = in_processing."}',
     ("done", "resumed", "in_processing")),
    (400, '{"detail":"Invalid resume request: privacy request \'p\' status = error."}',
     ("done", "ended_in_fides", "error")),
    (400, '{"detail":"Invalid resume request: privacy request \'p\' status = pending."}',
     ("retry", "resume_refused", None)),
    (403, '{"detail":"Webhook token expired"}', ("give_up", "token_expired", None)),
    (403, '{"detail":"Invalid token"}', ("retry", "resume_refused", None)),
    (404, "not json", ("retry", "resume_refused", None)),
    (None, None, ("retry", "resuming", None)),
])
def test_fides_answers_are_read(code: int | None, body: str | None, expected: tuple) -> None:
    v = fides_state.read_answer(code, body, "ReadTimeout" if code is None else None)
    assert (v.outcome, v.state, v.fides_status) == expected


def test_the_fides_migration_backfills_state_and_expiry_and_drops_used_tokens(tmp_path) -> None:  # noqa: ANN001
    import sqlalchemy as sa
    from alembic import command

    from tests.app.test_migrations import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0006")
    engine = sa.create_engine(url)
    try:
        with engine.begin() as c:
            c.execute(sa.text("INSERT INTO fidesresume (privacy_request_id, request_id, reply_to, token, created_at, "
                              "resumed_at) VALUES ('p1', 'r1', 'u', 'live', '2026-12-01 10:00:00.000000', NULL), "
                              "('p2', 'r2', 'u', 'used', '2026-12-01 10:00:00.000000', '2026-12-02 10:00:00.000000')"))
        command.upgrade(cfg, "head")
        with engine.begin() as c:
            rows = c.execute(sa.text("SELECT privacy_request_id, state, token, token_expires_at FROM fidesresume "
                                     "ORDER BY privacy_request_id")).all()
    finally:
        engine.dispose()
    assert [r[:3] for r in rows] == [("p1", "halted", "live"), ("p2", "resuming", None)]
    assert rows[0][3].startswith("2026-12-03 22:00:00")  # created_at + 216000 s
