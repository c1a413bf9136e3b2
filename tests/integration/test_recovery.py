"""Nothing acknowledged is lost: a worker killed mid-job is recovered by the reconciler."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS, redis_available
from tests.integration.conftest import ADMIN_KEY, ROOT, free_port

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
