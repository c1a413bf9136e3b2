"""Nothing acknowledged is lost: a worker killed mid-job is recovered by the reconciler; a worker
killed at a step of completion leaves disk and database agreeing; a request failed past its deadline
stays owed until a retry completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS, redis_available
from tests.integration.conftest import ADMIN_KEY, ROOT, free_port, start_stack
from tests.integration.consistency import disagreements, wait_agree
from tests.integration.procs import arm, kill_workers, wait_new_workers, wait_paused

pytestmark = pytest.mark.integration


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _killpg(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(p.pid, sig)
        p.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:  # sweep what is left of the group (a pool child can outlive its parent)
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_worker_killed_mid_job_is_resumed(tmp_path: Path) -> None:
    if not redis_available():
        pytest.skip("Redis not reachable")
    import redis

    redis.Redis.from_url(f"{REDIS}/10").flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_DATA_DIR": str(tmp_path), "LETHE_DEMO_MODELS": "digits", "LETHE_PORT": str(port),
                "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "LETHE_SUBJECT_KEY_SECRET": "integration-secret",
                "LETHE_REDIS_URL": f"{REDIS}/10", "LETHE_BROKER_URL": f"{REDIS}/10",
                "LETHE_BATCH_WINDOW_S": "0", "LETHE_JOB_LEASE_S": "4", "LETHE_RECONCILE_INTERVAL_S": "2",
                "LETHE_REPLICA_TTL_S": "4", "LETHE_HEARTBEAT_INTERVAL_S": "0.5", "LETHE_POLL_INTERVAL_S": "1",
                "OMP_NUM_THREADS": "1"})
    subprocess.run([sys.executable, "-m", "app.cli", "bootstrap"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    worker_cmd = ["celery", "-A", "workers.celery_app", "worker", "-Q", "unlearn,housekeeping", "-c", "2", "-B",
                  "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"]
    api = _spawn(["uvicorn", "app.main:app", "--port", str(port)], env, tmp_path / "api.log")
    worker = _spawn(worker_cmd, env, tmp_path / "worker1.log")
    h = {"Authorization": f"Bearer {ADMIN_KEY}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=h, timeout=30) as c:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.3)
            subject = next(s for s in (f"digits-{i:04d}" for i in range(400))
                           if c.get(f"/v1/subjects/{s}").json().get("samples", {}).get("digits", {}).get("train"))
            rid = c.post("/v1/erasure-requests", json={"subject_id": subject, "policy": "retrain"}).json()["id"]
            # Kill the whole worker (main process and pool child) as soon as the job runs.
            deadline = time.monotonic() + 60
            while c.get(f"/v1/erasure-requests/{rid}").json()["status"] in ("queued", "received"):
                assert time.monotonic() < deadline, "job never started"
                time.sleep(0.05)
            _killpg(worker)
            killed_at = c.get(f"/v1/erasure-requests/{rid}").json()
            assert killed_at["status"] not in ("completed", "failed"), "job finished before the kill"
            # A new worker: its reconciler finds the orphaned job once the lease expires and resumes it.
            worker = _spawn(worker_cmd, env, tmp_path / "worker2.log")
            deadline = time.monotonic() + 180
            while (body := c.get(f"/v1/erasure-requests/{rid}").json())["status"] not in ("completed", "failed"):
                assert time.monotonic() < deadline, body
                time.sleep(0.5)
            assert body["status"] == "completed", body
            assert c.get(f"/v1/subjects/{subject}").json()["samples"] == {}
            types = [e["type"] for e in c.get("/v1/audit/events", params={"type": "job_resumed"}).json()["items"]]
            assert types == ["job_resumed"]
            assert c.get("/v1/audit/verify").json()["ok"] is True
    finally:
        _killpg(worker, signal.SIGTERM)
        _killpg(api, signal.SIGTERM)


# ---------------------------------------------------------------- on `lethe run` (issue 23)
# Both tests below share Redis DB 10 with the one above: one file runs its tests one after another.

def _overdue_gauge(c: httpx.Client) -> float:
    line = next(x for x in c.get("/metrics").text.splitlines()
                if x.startswith('lethe_open_erasure_requests{days_to_due="overdue"}'))
    return float(line.rsplit(" ", 1)[1])


DEADLINE_S = 30  # the legal window of this stack's requests; the first (only) attempt fails within a few seconds


def test_a_deadline_passing_while_failed_keeps_the_request_owed_until_a_retry_completes_it(tmp_path: Path) -> None:
    """A request whose every attempt fails ends ``failed`` before its deadline; the deadline passes
    while it is ``failed``: it stays listed, overdue, counted by the gauge the alert rule reads, with
    the 80 % warning audited once; once the cause is gone an operator retry completes it (late, and
    recorded so). The failure: the worker's ``collect`` step raises ``Unavailable`` (what an unreadable
    data source raises) for as long as the test hook's file exists."""
    hooks = tmp_path / "hooks"
    cause = arm(hooks, "collect", "fail")
    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=10, extra_env={
        "LETHE_TEST_HOOK_DIR": str(hooks), "LETHE_DEADLINE_OVERRIDE_S": str(DEADLINE_S),
        "LETHE_MAX_REQUEST_ATTEMPTS": "1", "LETHE_DEADLINE_CHECK_INTERVAL_S": "1"})
    try:
        with stack.client() as c:
            rid = c.post("/v1/erasure-requests", json={"subject_id": "toy-03"}).json()["id"]
            failed = stack.wait_status(rid, ("failed", "completed"), timeout=DEADLINE_S)
            assert failed["status"] == "failed" and "injected failure" in failed["error"], failed
            due = datetime.fromisoformat(failed["due_at"].replace("Z", "+00:00"))
            assert datetime.now(timezone.utc) < due, "the request failed only after its deadline"
            assert c.get("/v1/subjects/toy-03").json()["suppressed"] is True

            # The deadline passes while it is failed: never dropped, visibly owed.
            deadline = time.monotonic() + DEADLINE_S + 60
            while True:
                overdue = [r["id"] for r in c.get("/v1/erasure-requests", params={"overdue": "true"}).json()["items"]]
                warned = stack.events("deadline_80_percent", rid)
                if rid in overdue and warned and _overdue_gauge(c) >= 1:
                    break
                assert time.monotonic() < deadline, (overdue, warned, _overdue_gauge(c))
                time.sleep(0.5)
            body = c.get(f"/v1/erasure-requests/{rid}").json()
            assert body["status"] == "failed" and body["completed_at"] is None, body
            assert datetime.now(timezone.utc) > due
            assert warned[0]["payload"]["status"] == "failed", warned  # warned while failed
            alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
            assert 'max(lethe_open_erasure_requests{days_to_due="overdue"}) > 0' in alerts  # the rule this fires
            assert c.get("/v1/subjects/toy-03").json()["samples"], "the owed subject's rows went before completion"

            # The cause is removed; an operator retries; it completes, late.
            cause.unlink()
            r = c.post(f"/v1/erasure-requests/{rid}/retry")
            assert r.status_code == 202, r.text
            done = stack.wait_status(rid, ("completed", "failed"), timeout=120)
            assert done["status"] == "completed", done
            assert datetime.fromisoformat(done["completed_at"].replace("Z", "+00:00")) > due
            assert c.get("/v1/subjects/toy-03").json()["samples"] == {}
            assert rid not in [r["id"] for r in c.get("/v1/erasure-requests", params={"overdue": "true"}).json()["items"]]
            assert _overdue_gauge(c) == 0
            assert len(stack.events("deadline_80_percent", rid, at_least=1)) == 1  # warned once, not on every beat
            assert len(stack.events("erasure_failed", rid, at_least=1)) == 1
            assert len(stack.events("erasure_completed", rid, at_least=1)) == 1
            assert c.get("/v1/audit/verify").json()["ok"] is True
    finally:
        cleanup()


@pytest.mark.parametrize(("step", "backend"), [
    # PostgreSQL at ``complete``: the paused worker holds its transaction open, which on SQLite would hold
    # the one write lock and stall the API (the test reads the request's state before the kill).
    ("complete", "postgresql"), ("drain_deletions", "sqlite")])
def test_worker_killed_at_completion_completes_once_and_leaves_disk_and_database_agreeing(
        tmp_path: Path, step: str, backend: str) -> None:
    """SIGKILL every worker process while the job's worker is held at a completion step (the test
    hook's pause, not a timer): ``complete`` — the new version published and serving, the completion
    staged in the session, not committed; ``drain_deletions`` — committed, the obsolete files still
    on the to-delete list. ``lethe run`` starts a fresh worker; the request ends ``completed`` exactly
    once, every version the database can serve or roll back to has its files, the purged one's are
    gone, the to-delete list is drained, no orphan is left and the audit chain verifies."""
    hooks = tmp_path / "hooks"
    arm(hooks, step, "pause")
    stack, cleanup = start_stack(tmp_path, backend, redis_db=10, extra_env={
        "LETHE_TEST_HOOK_DIR": str(hooks), "LETHE_ORPHAN_GRACE_S": "5"})
    try:
        with stack.client() as c:
            v1 = c.get("/v1/models/toy").json()["serving_version"]
            rid = c.post("/v1/erasure-requests", json={"subject_id": "toy-04"}).json()["id"]
            wait_paused(hooks, step)
            at_kill = c.get(f"/v1/erasure-requests/{rid}").json()
            serving = c.get("/v1/models/toy").json()["serving_version"]
            assert serving > v1  # the new version is published and serves
            if step == "complete":
                assert at_kill["status"] == "deploying", at_kill  # nothing of the completion committed
            else:
                assert at_kill["status"] == "completed", at_kill
                assert any(d.startswith("on the to-delete list") for d in disagreements(stack.db_url, stack.data_dir))
            wait_new_workers(stack.proc.pid, kill_workers(stack.proc.pid))  # lethe run starts a new one

            done = stack.wait_status(rid, ("completed", "failed"), timeout=180)
            assert done["status"] == "completed", done
            assert done["result"]["models"]["toy"]["version_after"] == serving
            assert len(stack.events("erasure_completed", rid, at_least=1)) == 1
            resumed = stack.events("job_resumed", at_least=1 if step == "complete" else 0)
            assert len(resumed) == (1 if step == "complete" else 0), resumed
            assert c.get("/v1/subjects/toy-04").json()["samples"] == {}
            versions = {v["version"]: v["state"] for v in c.get("/v1/models/toy").json()["versions"]}
            assert versions[v1] == "purged", versions  # the tainted version, purged once
            wait_agree(stack.db_url, stack.data_dir)  # the reconciler drained what the kill left
            r = c.post("/v1/models/toy/rollback", json={"version": v1})
            assert r.status_code == 409, r.text
            assert c.get("/v1/audit/verify").json()["ok"] is True
    finally:
        cleanup()
