"""A real Lethe stack in subprocesses: `lethe run` (bootstrap + Celery worker + uvicorn).

Backends: SQLite file (embedded default) and a fresh PostgreSQL database per test;
broker: real Redis (a dedicated DB index, flushed first).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS, create_pg_database, redis_available

ADMIN_KEY = "lethe_integration_admin_key_0123456789"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Stack:
    url: str
    db_url: str
    data_dir: Path
    proc: subprocess.Popen
    headers: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30)

    def wait_status(self, request_id: str, statuses: tuple[str, ...], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                body = c.get(f"/v1/erasure-requests/{request_id}").json()
                if body["status"] in statuses:
                    return body
                time.sleep(0.3)
        raise AssertionError(f"request {request_id} did not reach {statuses}; last: {body}")

    def events(self, type_: str, request_id: str | None = None, *, at_least: int = 0, timeout: float = 30) -> list[dict]:
        """The chained audit events of one type (of one request), oldest first; waits (bounded) until
        there are ``at_least`` of them, since an event is listed once an API process chained it."""
        params = {"type": type_, "limit": 1000, **({"request_id": request_id} if request_id else {})}
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while len(items := c.get("/v1/audit/events", params=params).json()["items"]) < at_least:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        return items

    def logs(self) -> str:
        return "".join((self.data_dir / f"{n}.log").read_text(errors="replace")[-4000:] for n in ("run",)
                       if (self.data_dir / f"{n}.log").exists())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(tmp_path: Path, backend: str, redis_db: int, extra_env: dict[str, str] | None = None,
                api_workers: int = 1) -> tuple[Stack, callable]:
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail("Redis must be reachable in CI")
        pytest.skip("Redis not reachable")
    drop = lambda: None  # noqa: E731
    if backend == "postgresql":
        db_url, drop = create_pg_database("lethe_e2e")
    else:
        db_url = f"sqlite:///{tmp_path / 'lethe.db'}"
    import redis

    redis.Redis.from_url(f"{REDIS}/{redis_db}").flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({
        "LETHE_DATA_DIR": str(tmp_path), "LETHE_DATABASE_URL": db_url, "LETHE_PORT": str(port),
        "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY, "LETHE_DEMO_MODELS": "toy",
        "LETHE_SUBJECT_KEY_SECRET": "integration-secret",
        "LETHE_REDIS_URL": f"{REDIS}/{redis_db}", "LETHE_BROKER_URL": f"{REDIS}/{redis_db}",
        "LETHE_BATCH_WINDOW_S": "0.5", "LETHE_REPLICA_TTL_S": "4", "LETHE_HEARTBEAT_INTERVAL_S": "0.5",
        "LETHE_POLL_INTERVAL_S": "1", "LETHE_RECONCILE_INTERVAL_S": "3", "LETHE_JOB_LEASE_S": "6",
        "LETHE_API_WORKERS": str(api_workers), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    })
    log = open(tmp_path / "run.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "run"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    stack = Stack(url=f"http://127.0.0.1:{port}", db_url=db_url, data_dir=tmp_path, proc=proc,
                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lethe run exited early:\n{stack.logs()}")
        try:
            if httpx.get(f"{stack.url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        stop(stack)
        raise AssertionError(f"stack not ready:\n{stack.logs()}")

    def cleanup() -> None:
        stop(stack)
        drop()

    return stack, cleanup


def stop(stack: Stack) -> None:
    try:
        os.killpg(stack.proc.pid, signal.SIGTERM)
        stack.proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    # Sweep the whole process group: a worker's pool child can outlive `lethe run` itself.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(stack.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    s, cleanup = start_stack(tmp_path, request.param, redis_db=11 if request.param == "sqlite" else 12)
    try:
        yield s
    finally:
        cleanup()
