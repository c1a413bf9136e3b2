"""Operators' series on /metrics (issue 11 section 3): the time-to-forget histogram is observed when a
request completes and never falls as requests age; DB-derived gauges and audit tallies show each
scenario made here; HTTP metrics name route templates, never the paths (which carry subject IDs)."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session, delete, select

from app.core.db import session_scope
from app.db.models import (AuditEvent, ErasureRequest, ErasureTarget, MetricCounter, Model, UnlearningJob, as_utc,
                           utcnow)
from app.services import audit, metrics
from app.services.requests import lifecycle
from tests.conftest import engine_for


def scrape(client: TestClient) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}


def complete(session: Session, *, seconds_ago: float) -> ErasureRequest:
    """A request through the real transition: its target done, then ``complete_model``."""
    if session.get(Model, "m1") is None:
        session.add(Model(name="m1", spec="toy", serving_version=1))
    now = utcnow()
    req = ErasureRequest(subject_key=uuid.uuid4().hex, status="deploying", due_at=now + timedelta(days=30),
                         received_at=now - timedelta(seconds=seconds_ago))
    session.add(req)
    session.flush()
    session.add(ErasureTarget(request_id=req.id, model_name="m1", status="done"))
    session.flush()
    lifecycle.complete_model(session, req, model_name="m1", actor="test",
                             detail={"job_id": "j", "version_before": None, "version_after": None, "method": "retrain"})
    session.commit()
    return req


def bucket(samples: dict, le: str) -> float:
    return samples[("lethe_time_to_forget_seconds_bucket", (("le", le),))]


def test_time_to_forget_is_observed_at_completion_and_never_falls(client: TestClient, session: Session) -> None:
    first = complete(session, seconds_ago=90)
    samples = scrape(client)
    assert bucket(samples, "60.0") == 0 and bucket(samples, "120.0") == 1 and bucket(samples, "+Inf") == 1
    assert samples[("lethe_time_to_forget_seconds_count", ())] == 1
    assert 90 <= samples[("lethe_time_to_forget_seconds_sum", ())] < 100
    assert samples[("lethe_completed_erasure_requests_30d", ())] == 1
    complete(session, seconds_ago=4)
    samples = scrape(client)
    assert bucket(samples, "5.0") == 1 and bucket(samples, "120.0") == 2
    assert samples[("lethe_time_to_forget_30d_seconds", (("quantile", "0.5"),))] < 5
    assert samples[("lethe_time_to_forget_30d_seconds", (("quantile", "0.99"),))] >= 90
    # Both requests age out of the 30-day window: the 30-day view drops them, the counter does not.
    for req in session.exec(select(ErasureRequest).where(ErasureRequest.status == "completed")).all():
        req.completed_at = as_utc(req.completed_at) - timedelta(days=40)
        session.add(req)
    session.commit()
    samples = scrape(client)
    assert samples[("lethe_time_to_forget_seconds_count", ())] == 2 and bucket(samples, "+Inf") == 2
    assert samples[("lethe_completed_erasure_requests_30d", ())] == 0
    assert first.status == "completed"


def test_increments_are_not_lost_under_concurrency(backend: str) -> None:
    """Eight writers, each committing 15 increments of the same rows in its own transaction."""
    engine, name = engine_for(backend), f"test_{uuid.uuid4().hex[:8]}"
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(15):
                with session_scope(engine) as s:
                    metrics.increment(s, name, {"bucket:1.0": 1, "count": 1, "sum": 0.5})
                    s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with session_scope(engine) as s:
        values = dict(s.exec(select(MetricCounter.series, MetricCounter.value).where(MetricCounter.name == name)).all())
        s.exec(delete(MetricCounter).where(MetricCounter.name == name))
        s.commit()
    assert not errors, errors
    assert values == {"bucket:1.0": 120, "count": 120, "sum": 60}


def test_operators_series_show_their_scenarios(client: TestClient, session: Session) -> None:
    metrics.reset_tallies()
    now = utcnow()
    session.add_all([Model(name="m1", spec="toy", serving_version=3), Model(name="m2", spec="toy")])
    session.flush()
    failed = {"method": "finetune", "passed": False, "report": {"gates": {"mia": {"passed": False}}}}
    session.add_all([
        UnlearningJob(model_name="m1", status="completed", method="retrain",
                      attempts=[failed, {"method": "retrain", "passed": True}]),
        UnlearningJob(model_name="m1", status="completed", method="retrain", attempts=[{"method": "retrain"}]),
        UnlearningJob(model_name="m1", status="completed", method="finetune", attempts=[{"method": "finetune"}]),
        UnlearningJob(model_name="m1", status="failed", method=None, attempts=[failed]),
    ])
    req = ErasureRequest(subject_key="queued", status="queued", due_at=now + timedelta(days=30))
    session.add(req)
    session.flush()
    session.add_all([ErasureTarget(request_id=req.id, model_name="m1", queued_at=now - timedelta(hours=3)),
                     ErasureTarget(request_id=req.id, model_name="m2", status="running")])
    for gates, passed in ((["mia", "retain_acc"], False), (["mia"], False), ([], True)):
        audit.append(session, type="unlearning_attempted", actor="test",
                     payload={"job_id": "j", "model": "m1", "method": "finetune", "passed": passed, "gates": gates})
    audit.append(session, type="utility_warning", actor="test",
                 payload={"job_id": "j", "model": "m1", "version": 3, "method": "retrain", "warning": "low"})
    audit.sync(session)
    samples = scrape(client)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("lethe_erasure_requests", status="queued") == 1
    assert value("lethe_erasure_requests", status="failed") == 0  # every status, zero included
    assert value("lethe_queued_erasure_targets", model="m1") == 1
    assert value("lethe_queued_erasure_targets", model="m2") is None
    assert 3 * 3600 <= value("lethe_oldest_queued_erasure_age_seconds", model="m1") < 3 * 3600 + 60
    assert value("lethe_unlearning_jobs", method="retrain", status="completed") == 2
    assert value("lethe_unlearning_jobs", method="unknown", status="failed") == 1
    assert value("lethe_exact_fallback_jobs", model="m1") == 1
    assert value("lethe_gate_failures_total", gate="mia", method="finetune") == 2
    assert value("lethe_gate_failures_total", gate="retain_acc", method="finetune") == 1
    assert value("lethe_unlearning_attempts_total", method="finetune", passed="false") == 2
    assert value("lethe_utility_warnings_total", method="retrain") == 1
    assert value("lethe_model_serving_version", model="m1") == 3
    assert value("lethe_model_serving_version", model="m2") is None
    # The tally is incremental: a new event counts once more, the old ones are not read again.
    audit.append(session, type="unlearning_attempted", actor="test",
                 payload={"job_id": "k", "method": "finetune", "passed": False, "gates": ["mia"]})
    audit.sync(session)
    assert scrape(client)[("lethe_gate_failures_total", (("gate", "mia"), ("method", "finetune")))] == 3
    assert session.exec(select(AuditEvent).where(AuditEvent.type == "utility_warning")).first() is not None


def test_http_metrics_name_route_templates_not_paths(client: TestClient, admin_headers: dict) -> None:
    secret = "subject-" + uuid.uuid4().hex
    client.get(f"/v1/subjects/{secret}", headers=admin_headers)
    client.get(f"/no/such/{secret}")
    assert client.get("/console/console.css").status_code == 200
    text = client.get("/metrics").text
    assert secret not in text
    samples = scrape(client)
    routes = {dict(labels).get("route") for (name, labels) in samples if name == "lethe_http_requests_total"}
    assert "/v1/subjects/{subject_id}" in routes and "unmatched" in routes
    assert "/console/{path}" in routes and not any("console.css" in (r or "") for r in routes)  # its mount
    assert any(name == "lethe_http_request_duration_seconds_bucket" and ("route", "/v1/subjects/{subject_id}") in labels
               for name, labels in samples)
