"""deploy/healthcheck.py, the containers' health checks: a real Celery worker answers the ping to its
own node only; a real beat writes the schedule file the beat check reads, and a stale one fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REDIS, redis_available

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "healthcheck.py"
BROKER = f"{REDIS}/6"  # DB 6: test_example_plugin uses it too, but only in the integration phase, never at once


def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    return {**base, "LETHE_DATA_DIR": str(tmp_path), "LETHE_BROKER_URL": BROKER, "LETHE_REDIS_URL": BROKER,
            "LETHE_SUBJECT_KEY_SECRET": "hc-secret"}


def check(*argv: str, tmp_path: Path) -> int:
    return subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, env=env(tmp_path), capture_output=True,
                          timeout=60).returncode


@pytest.fixture
def celery(tmp_path: Path) -> Iterator:
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail("Redis must be reachable in CI")
        pytest.skip("Redis not reachable")
    import redis

    redis.Redis.from_url(BROKER).flushdb()  # no tasks left by an earlier beat
    procs: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.celery_app", *argv], cwd=ROOT,
                                env=env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for(predicate, timeout: float = 60.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def test_worker_check_pings_its_own_node(celery, tmp_path: Path) -> None:  # noqa: ANN001
    node = f"lethe-hc-{os.getpid()}@{socket.gethostname()}"
    assert check("worker", "--node", node, "--timeout", "1", tmp_path=tmp_path) == 1  # not started yet
    celery("worker", "-Q", "housekeeping", "-c", "1", "-n", node, "--loglevel", "WARNING")
    assert wait_for(lambda: check("worker", "--node", node, "--timeout", "2", tmp_path=tmp_path) == 0)
    assert check("worker", "--node", f"someone-else@{socket.gethostname()}", "--timeout", "1", tmp_path=tmp_path) == 1


def test_beat_check_reads_the_schedule_file_beat_writes(celery, tmp_path: Path) -> None:  # noqa: ANN001
    schedule = tmp_path / "beat" / "celerybeat-schedule"
    schedule.parent.mkdir()
    assert check("beat", "--schedule", str(schedule), tmp_path=tmp_path) == 1  # no beat, no file
    celery("beat", "--loglevel", "WARNING", "-s", str(schedule))
    assert wait_for(lambda: check("beat", "--schedule", str(schedule), tmp_path=tmp_path) == 0)
    old = time.time() - 3600
    for path in schedule.parent.iterdir():  # a beat whose loop stopped an hour ago
        os.utime(path, (old, old))
    assert check("beat", "--schedule", str(schedule), "--max-age", "600", tmp_path=tmp_path) == 1


def test_api_check_needs_a_200_from_healthz(tmp_path: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/healthz" and self.server.healthy else 503)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.healthy = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = str(server.server_address[1])
    try:
        assert check("api", "--port", port, tmp_path=tmp_path) == 0
        server.healthy = False
        assert check("api", "--port", port, tmp_path=tmp_path) == 1
    finally:
        server.shutdown()
    assert check("api", "--port", port, tmp_path=tmp_path) == 1  # nothing listening
