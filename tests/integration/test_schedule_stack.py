"""Scheduled erasures on the running stack (issue 16): real MovieLens users in a burst and spread out,
each first ``scheduled`` with the interim version serving on the replica, then ``completed`` by ONE
exact job before its ``exact_due_at``, then predicted exactly like a never-seen user; the interim
version's parent (and the interim itself) can never be rolled back to once the erasures complete."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, start_stack
from tests.integration.consistency import wait_agree
from tests.integration.procs import arm, kill_workers, wait_new_workers, wait_paused
from tests.integration.test_erasure_sequence import NEVER_SEEN_USER, heavy_users, p_like

pytestmark = [pytest.mark.integration, pytest.mark.slow]
# The exact job starts when the 4th subject is owed (max_owed), well before exact_due_at - lead: the
# burst and the later request get their interims first (~10 s each on a loaded 2-core machine), and
# the test does not sit out a long wait (the deadline wake itself is tested in
# tests/workers/test_schedule_pipeline.py and tests/ml/test_schedule.py).
EXACT_WITHIN_S = 300
MAX_OWED = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def scheduled_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    stack, cleanup = start_stack(tmp_path, request.param, redis_db=14, extra_env={
        "LETHE_DEMO_MODELS": "movielens", "LETHE_BATCH_WINDOW_S": "0.2", "LETHE_SCHEDULE_TICK_S": "1",
        "LETHE_RETRY_BACKOFF_S": "1"})  # start_stack's short 6 s lease (tests/workers/test_lease.py)
    try:
        yield stack
    finally:
        cleanup()


def wait_interim(c, request_id: str, timeout: float = 60) -> dict:  # noqa: ANN001
    """The request once its interim version served everywhere (it may already be in its exact job)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = c.get(f"/v1/erasure-requests/{request_id}").json()
        if body["forgotten_at"] or body["status"] == "failed":
            return body
        time.sleep(0.3)
    raise AssertionError(f"no interim for {request_id}: {body}")


def _ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_burst_and_spread_are_scheduled_then_completed_by_one_exact_job(scheduled_stack: Stack) -> None:
    stack = scheduled_stack
    users, movies = heavy_users()
    users = users[:MAX_OWED]
    with stack.client() as c:
        r = c.put("/v1/models/movielens/policy",
                  json={"schedule": {"exact_within_s": EXACT_WITHIN_S, "max_owed": MAX_OWED, "interim": "params"}})
        assert r.status_code == 200 and r.json()["schedule_source"] == "model", r.text
        v1 = c.get("/v1/models/movielens").json()["serving_version"]
        ids: dict[str, str] = {}
        for user in users[:3]:  # a burst
            ids[user] = c.post("/v1/erasure-requests", json={"subject_id": user}).json()["id"]
        scheduled = {u: stack.wait_status(ids[u], ("scheduled", "completed", "failed"), 60) for u in users[:3]}
        for body in scheduled.values():  # the burst waits for the exact job with its interim serving
            assert body["status"] == "scheduled", body
            assert body["forgotten_at"] and body["exact_due_at"] and body["completed_at"] is None
        # the burst's interim serves on the replica (and is not free of the owed subjects)
        serving = c.get("/v1/models/movielens").json()
        burst_interim = max(b["result"]["interim"]["movielens"]["version"] for b in scheduled.values())
        assert serving["serving_version"] == burst_interim and serving["replicas"]
        assert all(r["version"] == burst_interim for r in serving["replicas"])
        for user in users[3:]:  # later, on its own: its interim makes max_owed, the exact job starts at once
            ids[user] = c.post("/v1/erasure-requests", json={"subject_id": user}).json()["id"]
            scheduled[user] = wait_interim(c, ids[user])
        for body in scheduled.values():
            interim = body["result"]["interim"]["movielens"]
            assert interim["method"] == "params" and interim["free_of_subject"] is False
            assert interim["verification"], interim  # the interim's report, shown on the request
        interim_versions = {b["result"]["interim"]["movielens"]["version"] for b in scheduled.values()}
        done = {u: stack.wait_status(ids[u], ("completed", "failed"), EXACT_WITHIN_S + 90) for u in users}
        for body in done.values():
            assert body["status"] == "completed", body
            assert _ts(body["completed_at"]) <= _ts(body["exact_due_at"]), body
            assert body["forgotten_at"] and _ts(body["forgotten_at"]) < _ts(body["completed_at"])
        jobs = {b["result"]["models"]["movielens"]["job_id"] for b in done.values()}
        assert len(jobs) == 1, jobs  # one exact job for every owed subject
        final = {b["result"]["models"]["movielens"]["version_after"] for b in done.values()}
        assert len(final) == 1 and {b["result"]["models"]["movielens"]["method"] for b in done.values()} == {"retrain"}
        inputs = [{"user_id": uid, "movie_id": m} for u in users for m in movies[u] for uid in (int(u), NEVER_SEEN_USER)]
        answer = c.post("/v1/models/movielens/predict", json={"inputs": inputs}).json()
        assert answer["model_version"] == final.pop()
        preds = answer["predictions"]
        for i in range(0, len(inputs), 2):
            assert abs(p_like(preds[i]) - p_like(preds[i + 1])) <= 1e-6, inputs[i]
        for version in (v1, *sorted(interim_versions)):  # the interim's parent and the interims themselves
            r = c.post("/v1/models/movielens/rollback", json={"version": version})
            assert r.status_code == 409, (version, r.text)
        compute = c.get("/v1/models/movielens").json()["compute"]
        assert compute["erasures_completed"] == len(users) and compute["by_phase"]["exact"]["jobs"] == 1, compute
        metrics = c.get("/metrics").text
        assert 'lethe_compute_seconds_total{method="retrain",model="movielens",phase="exact"}' in metrics
        assert "lethe_time_to_interim_seconds_count 4.0" in metrics
        assert c.get("/v1/audit/verify").json()["ok"] is True


@pytest.mark.parametrize(("trouble", "backend"), [("killed", "sqlite"), ("failed", "postgresql")])
def test_an_exact_job_killed_or_failed_still_completes_every_request_before_exact_due_at(
        tmp_path: Path, trouble: str, backend: str) -> None:
    """Two scheduled erasures (interim serving), then the operator's exact job, which either has its
    worker SIGKILLed mid-job (held by the test hook after the data deletion, before training: not a
    timer) — ``lethe run`` starts a new worker, whose reconciler resumes the job once its lease ran
    out — or fails its first attempt (the hook's ``collect`` step raises ``Unavailable``) and is
    retried by the scheduler after its backoff once the cause is gone. Either way both requests end
    ``completed`` by one exact version before their ``exact_due_at``, and disk and database agree."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # Same Redis DB as the test above: tests of one file never run at once (--dist loadfile).
    stack, cleanup = start_stack(tmp_path, backend, redis_db=14, extra_env={
        "LETHE_DEMO_MODELS": "movielens", "LETHE_BATCH_WINDOW_S": "0.2", "LETHE_SCHEDULE_TICK_S": "1",
        "LETHE_RETRY_BACKOFF_S": "1", "LETHE_MAX_REQUEST_ATTEMPTS": "5", "LETHE_JOB_LEASE_S": "15",
        "LETHE_TEST_HOOK_DIR": str(hooks), "LETHE_ORPHAN_GRACE_S": "5"})
    try:
        users = heavy_users()[0][:2]
        with stack.client() as c:
            r = c.put("/v1/models/movielens/policy",
                      json={"schedule": {"exact_within_s": EXACT_WITHIN_S, "max_owed": None, "interim": "params"}})
            assert r.status_code == 200, r.text
            ids = [c.post("/v1/erasure-requests", json={"subject_id": u}).json()["id"] for u in users]
            for rid in ids:
                body = stack.wait_status(rid, ("scheduled", "completed", "failed"), 90)
                assert body["status"] == "scheduled" and body["forgotten_at"], body
            cause = arm(hooks, "unlearn" if trouble == "killed" else "collect",
                        "pause" if trouble == "killed" else "fail")
            assert c.post("/v1/models/movielens/exact-now").status_code == 202
            if trouble == "killed":
                wait_paused(hooks, "unlearn")
                assert all(c.get(f"/v1/erasure-requests/{rid}").json()["status"] != "completed" for rid in ids)
                wait_new_workers(stack.proc.pid, kill_workers(stack.proc.pid))  # lethe run starts a new one
            else:
                deadline = time.monotonic() + 90
                while not (retries := stack.events("erasure_retry_scheduled", ids[0])):
                    assert time.monotonic() < deadline, c.get(f"/v1/erasure-requests/{ids[0]}").json()
                    time.sleep(0.3)
                assert "injected failure" in retries[0]["payload"]["error"], retries
                cause.unlink()
                failed_job = retries[0]["payload"]["job_id"]
            done = [stack.wait_status(rid, ("completed", "failed"), EXACT_WITHIN_S) for rid in ids]
            for body in done:
                assert body["status"] == "completed", body
                assert _ts(body["completed_at"]) <= _ts(body["exact_due_at"]), body
            finished = {b["result"]["models"]["movielens"]["job_id"] for b in done}
            assert len(finished) == 1, finished  # one exact job completed both
            assert {b["result"]["models"]["movielens"]["method"] for b in done} == {"retrain"}
            if trouble == "killed":
                resumed = stack.events("job_resumed", at_least=1)
                assert [e["payload"]["job_id"] for e in resumed] == list(finished), resumed  # the same job, resumed
            else:
                assert failed_job not in finished  # the failed attempt's job ended; a new exact job completed
            for rid in ids:
                assert len(stack.events("erasure_completed", rid, at_least=1)) == 1
            wait_agree(stack.db_url, stack.data_dir)
            assert c.get("/v1/audit/verify").json()["ok"] is True
    finally:
        cleanup()
