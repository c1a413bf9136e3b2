"""Nothing acknowledged is ever lost: a Redis restart ends with the request completed, never dropped.

Each test runs its own throw-away ``redis-server`` (no RDB, no AOF), so killing and restarting it
loses every queued and unacknowledged Celery message. The erasure request is durable in the DB,
and the reconciler (Celery beat, every ``LETHE_RECONCILE_INTERVAL_S``) must re-send its work once
the broker is back.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Stack, free_port, start_stack

pytestmark = pytest.mark.integration

PREDICT_BODY = {"inputs": [{"x": [0.5] * 16}]}
COMPLETE_TIMEOUT_S = 240


class PrivateRedis:
    """A ``redis-server`` subprocess without persistence: a restart starts empty."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        self.starts += 1
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child keeps it open
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.workdir), "--logfile", ""],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"redis-server exited early:\n{self.log()}"
            if self.ping():
                return
            time.sleep(0.1)
        raise AssertionError(f"redis-server on port {self.port} did not answer:\n{self.log()}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
        except Exception:  # noqa: BLE001
            return False

    def kill(self) -> None:
        """SIGKILL: no shutdown save, no goodbye to clients."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not on PATH")
    r = PrivateRedis(tmp_path / "redis")
    try:
        r.start()
        yield r
    finally:
        r.kill()


def _stack_for(tmp_path: Path, r: PrivateRedis, redis_db: int) -> tuple[Stack, callable]:
    data_dir = tmp_path / "lethe"
    data_dir.mkdir()
    # A long batch window: the job is still waiting (in the queue or in the worker's window) at the kill.
    return start_stack(data_dir, "postgresql", redis_db=redis_db, api_workers=1,
                       extra_env={"LETHE_REDIS_URL": r.url, "LETHE_BROKER_URL": r.url,
                                  "LETHE_BATCH_WINDOW_S": "6"})


def _log_size(stack: Stack) -> int:
    path = stack.data_dir / "run.log"
    return path.stat().st_size if path.exists() else 0


def _wait_log(stack: Stack, r: PrivateRedis, pattern: str, *, since: int = 0, timeout: float = 120) -> None:
    """Wait until ``pattern`` (a regex) appears in the stack's log after byte offset ``since``."""
    rx = re.compile(pattern.encode())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(stack.data_dir / "run.log", "rb") as f:
            f.seek(since)
            if rx.search(f.read()):
                return
        assert stack.proc.poll() is None, f"lethe run died{_diag(stack, r)}"
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared in the log{_diag(stack, r)}")


WORKER_READY = r"celery@\S+ ready\."
UNLEARN_RECEIVED = r"Task lethe\.unlearn_model\[[0-9a-f-]+\] received"


def _diag(stack: Stack, r: PrivateRedis) -> str:
    alive = "alive" if stack.proc.poll() is None else f"exited rc={stack.proc.returncode}"
    return f"\n--- lethe run ({alive}) ---\n{stack.logs()}\n--- private redis ---\n{r.log()}"


def _serving_version(c: httpx.Client) -> int:
    return c.get("/v1/models/toy").json()["serving_version"]


def _assert_completed_and_served(stack: Stack, r: PrivateRedis, rid: str, version_before: int) -> None:
    try:
        done = stack.wait_status(rid, ("completed", "failed", "cancelled"), timeout=COMPLETE_TIMEOUT_S)
    except AssertionError as e:
        raise AssertionError(f"{e}{_diag(stack, r)}") from None
    assert done["status"] == "completed", f"{done}{_diag(stack, r)}"
    result = done["result"]["models"]["toy"]
    assert result["version_before"] == version_before, result
    assert result["version_after"] is not None and result["version_after"] > version_before, result
    with stack.client() as c:
        predicted = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model_version"] == result["version_after"], predicted.json()
        assert predicted.headers["x-model-version"] == str(result["version_after"])
        verify = c.get("/v1/audit/verify").json()
        assert verify["ok"] is True, verify
        types = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
        assert types[0] == "erasure_requested" and types[-1] == "erasure_completed", types
    assert stack.proc.poll() is None, f"lethe run died{_diag(stack, r)}"


@pytest.mark.parametrize("kill_at", ["right_after_202", "task_in_worker"])
def test_redis_restart_after_acknowledged_request_still_completes(tmp_path: Path, private_redis: PrivateRedis,
                                                                  kill_at: str) -> None:
    """202 acknowledged, then Redis is killed and comes back empty: the request still completes.

    ``right_after_202``: the kill races the delivery (the message is in Redis or just delivered).
    ``task_in_worker``: the worker already holds the unacked message and waits in its batch window;
    the kill takes the message (and Redis' unacked copy) with it.
    """
    r = private_redis
    stack, cleanup = _stack_for(tmp_path, r, redis_db=14)
    try:
        # /readyz is the API only; wait for the Celery worker too, so the kill hits a running consumer.
        _wait_log(stack, r, WORKER_READY)
        with stack.client() as c:
            version_before = _serving_version(c)
            since = _log_size(stack)
            created = c.post("/v1/erasure-requests", json={"subject_id": "toy-03", "reason": "Art. 17"})
            assert created.status_code == 202, created.text
            rid = created.json()["id"]
            if kill_at == "task_in_worker":
                _wait_log(stack, r, UNLEARN_RECEIVED, since=since, timeout=60)
            r.kill()  # every message, queued or unacked, is gone with it
            at_kill = c.get(f"/v1/erasure-requests/{rid}").json()
            assert at_kill["status"] not in ("completed", "failed"), f"finished before the kill: {at_kill}"
            time.sleep(2)
            r.start()
            assert r.starts == 2
        _assert_completed_and_served(stack, r, rid, version_before)
        with stack.client() as c:
            assert c.get("/v1/subjects/toy-03").json()["samples"] == {}
    finally:
        cleanup()


def test_request_submitted_while_redis_is_down_is_accepted_and_completes(tmp_path: Path,
                                                                        private_redis: PrivateRedis) -> None:
    """Broker down at submit time: the API still answers 202 (the DB holds the request), and it completes."""
    r = private_redis
    stack, cleanup = _stack_for(tmp_path, r, redis_db=15)
    try:
        _wait_log(stack, r, WORKER_READY)
        with stack.client() as c:
            version_before = _serving_version(c)
        r.kill()
        assert not r.ping()
        # A generous client timeout: the API may retry the publish a little, but must not hang or fail.
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=120) as c:
            t0 = time.monotonic()
            created = c.post("/v1/erasure-requests", json={"subject_id": "toy-04", "reason": "Art. 17"},
                             headers={"Idempotency-Key": "redis-down-1"})
            submit_s = time.monotonic() - t0
            assert created.status_code == 202, f"{created.status_code} after {submit_s:.1f}s: {created.text}" \
                                               f"{_diag(stack, r)}"
            rid = created.json()["id"]
            # Reads do not need the broker either.
            while_down = c.get(f"/v1/erasure-requests/{rid}")
            assert while_down.status_code == 200 and while_down.json()["status"] not in ("completed", "failed")
            # A client retry with the same key while Redis is still down replays the same request.
            replay = c.post("/v1/erasure-requests", json={"subject_id": "toy-04", "reason": "Art. 17"},
                            headers={"Idempotency-Key": "redis-down-1"})
            assert replay.status_code == 202 and replay.json()["id"] == rid, replay.text
        time.sleep(3)
        r.start()
        _assert_completed_and_served(stack, r, rid, version_before)
        with stack.client() as c:
            assert c.get("/v1/subjects/toy-04").json()["samples"] == {}
            assert len(c.get("/v1/erasure-requests").json()["items"]) == 1
    finally:
        cleanup()
