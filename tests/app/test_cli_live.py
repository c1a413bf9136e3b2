"""The CLI as a user runs it (``python -m app.cli``) against a real API: uvicorn with two worker
processes, no model, so nothing trains. A key revoked through one process is refused by both, once
the revoke answered: with Redis (the replicas confirm they dropped the key from their caches) and
without (the revoke waits out the key cache TTL)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS, redis_available

ROOT = Path(__file__).resolve().parents[2]
ADMIN_KEY = "lethe_cli_live_admin_key"

pytestmark = pytest.mark.integration


# Without Redis the default TTL (3 s); with Redis a long one, which the revoke must not wait out.
REDIS = {"no-redis": {"LETHE_REDIS_URL": "redis://127.0.0.1:1/0"},
         "redis": {"LETHE_REDIS_URL": f"{REDIS}/0", "LETHE_KEY_CACHE_TTL_S": "60"}}


@pytest.fixture(scope="module", params=sorted(REDIS))
def stack(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    if request.param == "redis" and not redis_available():
        pytest.fail("Redis must be reachable for this test (127.0.0.1:6379)")
    data_dir = tmp_path_factory.mktemp("cli-live")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_")}
    env.update({"LETHE_DATA_DIR": str(data_dir), "LETHE_MODELS": "", "LETHE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
                "LETHE_SUBJECT_KEY_SECRET": "cli-live-secret", "LETHE_BROKER_URL": "memory://",
                "LETHE_PORT": str(port), "LETHE_ENV": "test", **REDIS[request.param]})
    subprocess.run([sys.executable, "-m", "app.cli", "bootstrap"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    log = open(data_dir / "api.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port), "--workers", "2",
                             "--log-level", "warning"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (data_dir / "api.log").read_text()
            time.sleep(0.3)
        yield url, {**env, "LETHE_URL": url, "LETHE_KEY": ADMIN_KEY}
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def lethe(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_erase_follow_and_audit_on_a_live_stack(stack: tuple[str, dict[str, str]]) -> None:
    url, env = stack
    done = lethe(env, "erase", "someone-unknown", "--follow", "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["status"] == "no_data"
    shown = lethe(env, "status", view["id"], "--url", url, "--key", ADMIN_KEY)  # options after the command
    assert shown.returncode == 0 and "no_data" in shown.stdout
    verified = lethe(env, "audit", "verify", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True, verified.stderr
    refused = lethe({**env, "LETHE_KEY": "lethe_wrong"}, "requests")
    assert refused.returncode == 2 and "invalid_api_key" in refused.stderr


def test_a_revoked_key_is_refused_by_every_api_process(stack: tuple[str, dict[str, str]]) -> None:
    url, env = stack
    created = lethe(env, "keys", "create", "--name", "ops", "--scope", "erasure:read", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    headers = {"Authorization": f"Bearer {key['key']}"}
    with httpx.Client(base_url=url, headers=headers) as c:  # new connections: both processes answer
        assert all(httpx.get(f"{url}/v1/erasure-requests", headers=headers).status_code == 200 for _ in range(12))
        started = time.monotonic()
        revoked = lethe(env, "keys", "revoke", key["id"])
        assert revoked.returncode == 0 and "revoked" in revoked.stdout, revoked.stderr
        assert time.monotonic() - started < float(env.get("LETHE_KEY_CACHE_TTL_S", "inf")) / 2, "waited out the TTL"
        codes = [httpx.get(f"{url}/v1/erasure-requests", headers=headers).status_code for _ in range(12)]
        assert codes == [401] * 12
        assert c.get("/v1/erasure-requests").status_code == 401
