"""The schedule in the per-model policy, exact-now, the at_risk filter and compute per erasure
over HTTP and the CLI (issue 16)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from app.core.security import subject_key
from app.db.models import ErasureTarget, Model, utcnow
from app.services.requests import erasure
from tests.app.test_cli_commands import lethe  # noqa: F401 - the CLI fixture


def test_schedule_in_the_policy_and_its_validation(client: TestClient, admin_headers, toy_model) -> None:  # noqa: ANN001
    r = client.get("/v1/models/toy/policy", headers=admin_headers)
    assert r.status_code == 200 and r.json()["schedule"] == {"exact_within_s": 0.0, "max_owed": None,
                                                             "interim": "params"}
    assert r.json()["schedule_source"].startswith("default")
    body = {"schedule": {"exact_within_s": 3600, "max_owed": 50, "interim": "auto"}}
    r = client.put("/v1/models/toy/policy", json=body, headers=admin_headers)
    assert r.status_code == 200 and r.json()["schedule"] == {"exact_within_s": 3600.0, "max_owed": 50,
                                                             "interim": "auto"}
    assert r.json()["schedule_source"] == "model" and r.json()["chain_source"] == "spec default"
    for bad in ({"exact_within_s": -1}, {"exact_within_s": 8 * 86400}, {"max_owed": 0}, {"interim": "magic"},
                {"exact_within": 5}, {"exact_within_s": "soon"}):
        r = client.put("/v1/models/toy/policy", json={"schedule": bad}, headers=admin_headers)
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), bad
    assert client.get("/v1/models/toy/policy", headers=admin_headers).json()["schedule"]["max_owed"] == 50
    r = client.put("/v1/models/toy/policy", json={"schedule": None}, headers=admin_headers)
    assert r.json()["schedule"]["exact_within_s"] == 0.0 and r.json()["schedule_source"].startswith("default")


def test_exact_now_at_risk_and_compute(client: TestClient, admin_headers, session: Session, settings,  # noqa: ANN001
                                       toy_model) -> None:
    r = client.post("/v1/models/toy/exact-now", headers=admin_headers)
    assert r.status_code == 202 and r.json() == {"model": "toy", "owed": 0}
    assert session.get(Model, "toy").config["exact_requested_at"]
    assert client.post("/v1/models/nope/exact-now", headers=admin_headers).status_code == 404
    ids = []
    for subject, left in (("toy-02", timedelta(seconds=5)), ("toy-03", timedelta(days=3))):
        req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject))
        req.status, req.exact_due_at = "scheduled", utcnow() + left
        for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
            t.status = "scheduled"
            session.add(t)
        session.add(req)
        ids.append(req.id)
    session.commit()
    r = client.get("/v1/erasure-requests", params={"at_risk": True}, headers=admin_headers)
    assert r.status_code == 200 and [v["id"] for v in r.json()["items"]] == [ids[0]]
    view = client.get(f"/v1/erasure-requests/{ids[1]}", headers=admin_headers).json()
    assert view["status"] == "scheduled" and view["exact_due_at"] and view["forgotten_at"] is None
    model = client.get("/v1/models/toy", headers=admin_headers).json()
    assert model["compute"]["erasures_completed"] == 0 and model["compute"]["compute_per_erasure_s"] is None


@pytest.mark.usefixtures("toy_model")
def test_cli_policy_schedule_and_exact_now(lethe) -> None:  # noqa: ANN001, F811
    rc, out, _ = lethe("models", "policy", "toy", "--schedule", "exact_within_s=600,max_owed=20,interim=none")
    assert rc == 0 and "exact within 600 s, max_owed 20, interim none (model)" in out
    rc, out, _ = lethe("models", "policy", "toy", "--json")
    assert json.loads(out)["schedule"] == {"exact_within_s": 600.0, "max_owed": 20, "interim": "none"}
    rc, out, err = lethe("models", "policy", "toy", "--schedule", "exact_within_s=-5")
    assert rc != 0 and "exact_within_s" in out + err
    rc, out, _ = lethe("models", "exact-now", "toy")
    assert rc == 0 and "exact job requested for 0 owed" in out


def test_follow_prints_the_interim_and_the_exact_step_once_each() -> None:
    from app.cli.erasure import steps

    shown: set[str] = set()
    queued = {"status": "queued", "exact_due_at": None, "result": None}
    assert steps(queued, shown) == []
    scheduled = {"status": "scheduled", "exact_due_at": "2026-12-07T10:00:00Z", "forgotten_at": "2026-12-06T10:00:03Z",
                 "result": {"interim": {"movielens": {"version": 3, "method": "params"}}}}
    first = steps(scheduled, shown)
    assert len(first) == 1 and "step 1/2" in first[0] and "movielens v3 (params)" in first[0]
    assert "not yet erased" in first[0] and "2026-12-07T10:00:00Z" in first[0]
    assert steps(scheduled, shown) == []  # printed once
    done = {**scheduled, "status": "completed", "completed_at": "2026-12-06T12:00:00Z",
            "result": {**scheduled["result"], "models": {"movielens": {"version_after": 4, "method": "retrain"}}}}
    second = steps(done, shown)
    assert len(second) == 1 and "step 2/2" in second[0] and "movielens v4 (retrain)" in second[0]


def test_no_rollback_behind_the_interim_of_a_scheduled_erasure(client: TestClient, admin_headers,  # noqa: ANN001
                                                               session: Session, settings, toy_model) -> None:
    # QA: while a request was `scheduled` (its interim version v2 served, its own parameters cleared),
    # a rollback to v1 -- not tainted, since nothing was completed yet -- was accepted, and every
    # replica served the subject's own parameters again (MovieLens: the user's row was back).
    from app.db.models import ModelVersion, UnlearningJob
    from app.services.models import catalog as model_service

    v1 = model_service.get_version(session, "toy", 1)
    session.add(ModelVersion(model_name="toy", number=2, parent=1, artifact_path=v1.artifact_path, sha256=v1.sha256,
                             method="params", metrics={"interim": True}, free_of=list(v1.free_of)))
    model_service.set_serving(session, name="toy", number=2, actor="test")
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
    job = UnlearningJob(model_name="toy", status="completed", stage="completed", request_ids=[req.id],
                        phase="interim", method="params", version_before=1, version_after=2)
    session.add(job)
    session.flush()
    req.status = "scheduled"  # as lifecycle.interim_served leaves it: the target free, the version in the result
    req.result = {"interim": {"toy": {"job_id": job.id, "version": 2, "method": "params"}}}
    for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
        t.status, t.job_id = "scheduled", None
        session.add(t)
    session.add(req)
    session.commit()
    r = client.post("/v1/models/toy/rollback", json={"version": 1}, headers=admin_headers)
    assert r.status_code == 409 and r.json()["code"] == "tainted_version", r.text
    assert client.get("/v1/models/toy", headers=admin_headers).json()["serving_version"] == 2
    r = client.post("/v1/models/toy/rollback", json={"version": 2}, headers=admin_headers)
    assert r.status_code == 200
    for t in session.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all():
        t.status = "cancelled"  # nothing scheduled any more: v1 carries no completed erasure
        session.add(t)
    session.commit()
    assert client.post("/v1/models/toy/rollback", json={"version": 1}, headers=admin_headers).status_code == 200
