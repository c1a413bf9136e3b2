"""Lethe against a real Fides 2.86.2 server (``make test-fides``; marker ``fides``, not in ``make test``).

Fides runs network-isolated (tests/integration/fides_server.py); Lethe is a real stack (Redis DB 4).
Phase 1, Fides' default delay timeout: the happy path to ``complete``; a resume Fides had already
taken (its 400 ``status = complete`` ends Lethe's delivery as done); a repeat request for the erased
subject and an unknown subject (``halt: false``, complete at once); an email-only request (422).
Phase 2, Fides restarted with ``privacy_request_delay_timeout = 0``: the token has expired when Lethe
resumes; the request shows ``token_expired``, the alert's series counts it, Fides stays ``paused``.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, create_engine, select

from app.db.models import AuditEvent, CallbackDelivery, FidesResume
from tests.conftest import create_pg_database
from tests.integration import fides_server
from tests.integration.conftest import ROOT, Stack, free_port, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.fides]
FIDES_VENV = Path(os.environ.get("LETHE_FIDES_VENV", ROOT / "var" / "fides-venv")).resolve()
SLOW_ERASURE = {"LETHE_BATCH_WINDOW_S": "5"}  # time for the test to resume Fides before Lethe does


def lethe_view(c: httpx.Client, pid: str) -> dict:
    items = c.get("/v1/erasure-requests", params={"external_id": pid}).json()["items"]
    assert len(items) == 1, items
    return items[0]


def wait_view(c: httpx.Client, pid: str, pred, timeout: float = 180) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    view = None
    while time.monotonic() < deadline:
        view = lethe_view(c, pid)
        if pred(view):
            return view
        time.sleep(0.5)
    raise AssertionError(f"Lethe's view of {pid} never matched; last: {view}")


def held_subjects(c: httpx.Client, n: int) -> list[str]:
    found = [s for s in (f"toy-{i:02d}" for i in range(2, 40))
             if c.get(f"/v1/subjects/{s}").json()["samples"].get("toy", {}).get("train")]
    assert len(found) >= n
    return found[:n]


def db_rows(stack: Stack, model, *where):  # noqa: ANN001, ANN002, ANN201
    engine = create_engine(stack.db_url)
    try:
        with Session(engine) as s:
            return list(s.exec(select(model).where(*where)).all())
    finally:
        engine.dispose()


def test_lethe_with_a_real_fides_server(tmp_path: Path) -> None:
    if not (FIDES_VENV / "bin" / "fides").exists():
        pytest.fail(f"no Fides at {FIDES_VENV}: run `make test-fides`, which creates it")
    fides_port = free_port()
    (tmp_path / "lethe").mkdir()
    stack, cleanup = start_stack(tmp_path / "lethe", "postgresql", redis_db=4, extra_env={
        "LETHE_FIDES_URL": f"http://127.0.0.1:{fides_port}",  # bare: Lethe appends /api/v1
        "LETHE_HOUSEKEEPING_INTERVAL_S": "1", "LETHE_CALLBACK_BACKOFF_S": "1", **SLOW_ERASURE})
    fides_db, drop_fides_db = create_pg_database("fides")
    fides = fides_server.Fides(venv=FIDES_VENV, workdir=tmp_path / "fides", db_url=fides_db, port=fides_port,
                               lethe_port=int(stack.url.rsplit(":", 1)[1]))
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        fides.start()
        timings["fides_start_s"] = time.monotonic() - t0
        assert fides.netns_links() == ["lo"]  # Fides can reach nothing but its own loopback
        webhook = f"{stack.url}/integrations/fides/webhook"
        with fides.client() as fc, stack.client() as lc:
            fides_server.configure(fc, webhook_url=webhook, lethe_key=stack.headers["Authorization"].split()[1])
            s1, s2, s3 = held_subjects(lc, 3)

            # 1. The happy path: halted, erased, resumed, complete.
            t0 = time.monotonic()
            happy = fides_server.submit(fc, {"external_id": s1})
            fides_server.wait_status(fc, happy, ("paused",), timeout=60)
            timings["happy_paused_s"] = time.monotonic() - t0
            view = lethe_view(lc, happy)
            assert view["source"] == "fides" and view["fides"]["state"] in ("halted", "resuming", "resumed")
            expires = datetime.fromisoformat(view["fides"]["token_expires_at"].replace("Z", "+00:00"))
            assert abs((expires - datetime.now(UTC)).total_seconds() - 216000) < 600
            status, _ = fides_server.wait_status(fc, happy, ("complete", "error"), timeout=240)
            timings["happy_complete_s"] = time.monotonic() - t0
            assert status == "complete", fides.log_tail()
            view = wait_view(lc, happy, lambda v: v["fides"]["state"] == "resumed")
            assert view["status"] == "completed" and view["fides"]["fides_status"] is None

            # 2. Fides had already gone on (its operator, or a resume that timed out in Lethe): 400 = done.
            early = fides_server.submit(fc, {"external_id": s2})
            fides_server.wait_status(fc, early, ("paused",), timeout=60)
            [row] = db_rows(stack, FidesResume, FidesResume.privacy_request_id == early)
            assert row.state == "halted" and row.token and len(row.token) > 200
            r = httpx.post(f"{fides.api}/privacy-request/{early}/resume", json={},
                           headers={"Authorization": f"Bearer {row.token}"}, timeout=60)
            assert r.status_code == 200, r.text
            assert fides_server.wait_status(fc, early, ("complete",), timeout=60)[0] == "complete"
            view = wait_view(lc, early, lambda v: v["fides"]["state"] not in ("halted", "resuming"))
            assert (view["fides"]["state"], view["fides"]["fides_status"]) == ("resumed", "complete"), view
            [delivery] = db_rows(stack, CallbackDelivery, CallbackDelivery.request_id == view["id"])
            assert (delivery.status, delivery.attempts, delivery.auth_token) == ("delivered", 1, None)
            events = db_rows(stack, AuditEvent, AuditEvent.request_id == view["id"])
            delivered = [e.payload for e in events if e.type == "callback_delivered"]
            assert [(p["http_status"], p["fides_status"], p["privacy_request_id"]) for p in delivered] == \
                [(400, "complete", early)]
            assert not [e for e in events if e.type == "callback_failed"]
            assert any(e.type == "erasure_requested" and e.payload.get("external_id") == early for e in events)

            # 3. A repeat for the erased subject and an unknown subject: not halted, complete at once.
            for identity in ({"external_id": s1}, {"external_id": "nobody-known-to-lethe"}):
                pid = fides_server.submit(fc, identity)
                assert fides_server.wait_status(fc, pid, ("complete", "error"), timeout=60)[0] == "complete"
                assert lethe_view(lc, pid)["fides"]["state"] == "not_halted"
            # An email-only request: Lethe cannot map it (LETHE_FIDES_IDENTITY_FIELDS), Fides shows the 422.
            pid = fides_server.submit(fc, {"email": "someone@example.org"})
            assert fides_server.wait_status(fc, pid, ("complete", "error"), timeout=60)[0] == "error"

        # No live token at rest once resumes ended.
        assert all(r.token is None for r in db_rows(stack, FidesResume))
        assert all(d.auth_token is None for d in db_rows(stack, CallbackDelivery))

        # Phase 2: Fides' delay timeout 0 -> every reply-to-token has expired when Lethe resumes.
        fides.stop()
        fides.delay_timeout_min = 0
        fides.start()
        with fides.client() as fc, stack.client() as lc:
            late = fides_server.submit(fc, {"external_id": s3})
            fides_server.wait_status(fc, late, ("paused",), timeout=60)
            view = wait_view(lc, late, lambda v: v["fides"]["state"] == "token_expired", timeout=240)
            assert view["status"] == "completed" and view["fides"]["detail"] == "Webhook token expired"
            assert late in view["fides"]["next_step"]
            assert fides_server.status(fc, late) == "paused"  # Fides waits; Lethe says so
            samples = {(s.name, tuple(s.labels.items())): s.value
                       for f in text_string_to_metric_families(lc.get("/metrics").text) for s in f.samples}
            assert samples[("lethe_fides_requests", (("state", "token_expired"),))] == 1
            rules = {r["alert"]: r["expr"] for g in yaml.safe_load(
                (ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]}
            assert 'lethe_fides_requests{state="token_expired"}' in rules["LetheFidesTokenExpired"]
            [delivery] = db_rows(stack, CallbackDelivery, CallbackDelivery.request_id == view["id"])
            assert (delivery.status, delivery.attempts, delivery.auth_token) == ("failed", 1, None)
        print(f"\nFides real-server timings: {timings}")  # noqa: T201  (make test-fides shows them: -s)
    finally:
        fides.stop()
        cleanup()
        drop_fides_db()
