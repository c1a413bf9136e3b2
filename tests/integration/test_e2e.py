"""End to end on real services: HTTP erasure -> Celery worker -> MIA gate -> hot swap -> audit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def assert_mia_within_band(report: dict, *, exact: bool) -> None:
    """The report's MIA verdict recomputed from its own numbers: the test it names, inside its band."""
    from workers.verify.report import Gates

    test = report["mia_test"]
    assert report["gates"]["mia"]["passed"], report["gates"]["mia"]
    if test == "set_auc":  # two-sided: |AUC - exact-retrain reference| within the margin
        assert abs(report["mia_auc"] - report["reference_auc"]) <= report["mia_margin"], report
    elif test == "within_subject_auc":
        assert abs(report["within_auc"] - 0.5) <= report["mia_margin"], report
    elif test == "per_sample_rank":  # one person: too few samples for a set AUC
        assert report["low_power"] and abs(report["rank_z"]) <= Gates().rank_z_max, report
    else:
        assert test == "exact_guarantee" and exact and report["exact"], report


def test_erasure_end_to_end(stack: Stack) -> None:
    with stack.client() as c:
        before = c.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.5] * 16}]})
        assert before.status_code == 200 and before.json()["model_version"] == 1
        held = c.get("/v1/subjects/toy-02").json()
        assert held["samples"]["toy"]["train"] > 0

        created = c.post("/v1/erasure-requests", json={"subject_id": "toy-02", "reason": "Art. 17"},
                         headers={"Idempotency-Key": "e2e-1"})
        assert created.status_code == 202, created.text
        rid = created.json()["id"]
        done = stack.wait_status(rid, ("completed", "failed"))
        assert done["status"] == "completed", done
        assert done["percent"] == 100

        # The subject's raw samples are gone, and the subject is suppressed.
        held = c.get("/v1/subjects/toy-02").json()
        assert held["samples"] == {} and held["suppressed"] is True
        # Completion means the API already serves the new version.
        after = c.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.5] * 16}]})
        assert after.json()["model_version"] == 2 and after.headers["x-model-version"] == "2"
        # The MIA report is stored with the result.
        result = done["result"]["models"]["toy"]
        report = result["attempts"][-1]["report"]
        assert result["version_after"] == 2 and result["attempts"][-1]["passed"]
        assert_mia_within_band(report, exact=result["attempts"][-1]["exact"])
        model = c.get("/v1/models/toy").json()
        assert model["serving_version"] == 2
        assert all(r["version"] == 2 for r in model["replicas"]) and model["replicas"]
        assert done["result"]["time_to_forget_s"] > 0

        # The audit chain verifies and tells the story of the request.
        assert c.get("/v1/audit/verify").json()["ok"] is True
        types = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
        assert types[0] == "erasure_requested" and types[-1] == "erasure_completed"
        assert "samples_deleted" in types

    # Tampering with one stored event makes verification fail.
    engine = sa.create_engine(stack.db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE auditevent SET actor = 'someone-else' WHERE seq = 2"))
    engine.dispose()
    with stack.client() as c:
        report = c.get("/v1/audit/verify").json()
    assert report["ok"] is False and report["first_broken_seq"] == 2
    # No personal data in the logs of the API and the worker: the subject ID never appears.
    assert "toy-02" not in (stack.data_dir / "run.log").read_text(errors="replace")


def test_concurrent_retries_with_one_idempotency_key_make_one_request(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def post(_: int) -> tuple[int, str]:
        with stack.client() as c:
            r = c.post("/v1/erasure-requests", json={"subject_id": "nobody-at-all"},
                       headers={"Idempotency-Key": "same-key"})
            return r.status_code, r.json().get("id", r.text)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(16)))
    assert {code for code, _ in results} == {202}, results
    assert len({rid for _, rid in results}) == 1


def test_embedded_default_without_redis(tmp_path) -> None:  # noqa: ANN001
    """No Redis at all: kombu's SQLAlchemy transport on SQLite carries the task, replicas poll the DB."""
    from tests.integration.conftest import start_stack

    closed = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    s, cleanup = start_stack(tmp_path, "sqlite", redis_db=9,
                             extra_env={"LETHE_REDIS_URL": closed, "LETHE_BROKER_URL": ""})
    try:
        with s.client() as c:
            rid = c.post("/v1/erasure-requests", json={"subject_id": "toy-03"}).json()["id"]
        done = s.wait_status(rid, ("completed", "failed"), timeout=120)
        assert done["status"] == "completed", done
        assert (tmp_path / "broker.db").exists()
        with s.client() as c:
            assert c.post("/v1/models/toy/predict", json={"inputs": [{"x": [0.5] * 16}]}).json()["model_version"] == 2
    finally:
        cleanup()
