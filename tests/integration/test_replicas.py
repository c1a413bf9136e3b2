"""Several API replicas, one worker, real Redis + PostgreSQL: swaps, liveness, taint guard."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REDIS
from tests.integration.conftest import ROOT, Stack, free_port, start_stack

pytestmark = pytest.mark.integration
X = {"inputs": [{"x": [0.5] * 16}]}


@pytest.fixture(scope="module")
def stack2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s, cleanup = start_stack(tmp_path_factory.mktemp("replicas"), "postgresql", redis_db=13, api_workers=2)
    try:
        deadline = time.monotonic() + 30
        with s.client() as c:
            while len(c.get("/v1/models/toy").json()["replicas"]) < 2 and time.monotonic() < deadline:
                time.sleep(0.3)
        yield s
    finally:
        cleanup()


def _erase(s: Stack, subject: str) -> str:
    with s.client() as c:
        r = c.post("/v1/erasure-requests", json={"subject_id": subject})
        assert r.status_code == 202, r.text
        return r.json()["id"]


def test_swap_under_load_reaches_every_replica_without_failures(stack2: Stack) -> None:
    with stack2.client() as c:
        start_version = c.get("/v1/models/toy").json()["serving_version"]
    results: list[tuple[float, float, int, int | None]] = []  # sent, received, status, version
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=stack2.url, headers=stack2.headers, timeout=30) as c:
            while not stop.is_set():
                sent = time.monotonic()
                r = c.post("/v1/models/toy/predict", json=X)
                version = r.json().get("model_version") if r.status_code == 200 else None
                results.append((sent, time.monotonic(), r.status_code, version))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        rid = _erase(stack2, "toy-07")
        done = stack2.wait_status(rid, ("completed", "failed"))
        completed_seen = time.monotonic()
        while sum(1 for r in results if r[0] > completed_seen) < 100:  # 100+ more calls after completion
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done["status"] == "completed", done
    new_version = done["result"]["models"]["toy"]["version_after"]
    assert new_version == start_version + 1
    assert len(results) >= 100
    assert all(status == 200 for _, _, status, _ in results), {s for _, _, s, _ in results}
    assert {v for _, _, _, v in results} <= {start_version, new_version}
    # Once the request is completed, no replica answers with the old weights.
    assert all(v == new_version for sent, _, _, v in results if sent > completed_seen)
    with stack2.client() as c:
        replicas = c.get("/v1/models/toy").json()["replicas"]
    assert len(replicas) == 2 and {r["version"] for r in replicas} == {new_version}


def test_rollback_to_tainted_version_is_refused(stack2: Stack) -> None:
    rid = _erase(stack2, "toy-08")
    done = stack2.wait_status(rid, ("completed", "failed"))
    assert done["status"] == "completed"
    before = done["result"]["models"]["toy"]["version_before"]
    with stack2.client() as c:
        r = c.post("/v1/models/toy/rollback", json={"version": before})
        assert r.status_code == 409 and r.json()["code"] in ("tainted_version", "version_purged")
        versions = {v["version"]: v for v in c.get("/v1/models/toy").json()["versions"]}
        assert versions[before]["state"] == "purged"
        purged = c.get("/v1/audit/events", params={"type": "artifact_purged"}).json()["items"]
        assert any(e["payload"]["version"] == before and len(e["payload"]["sha256"]) == 64 for e in purged)


def _replica_pids(s: Stack) -> list[int]:
    with s.client() as c:
        return sorted({int(r["replica_id"].split("-")[-2]) for r in c.get("/v1/models/toy").json()["replicas"]})


def test_silent_replica_does_not_block_completion(stack2: Stack) -> None:
    pids = _replica_pids(stack2)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGSTOP)  # its heartbeat stops; it drops out after the TTL
    try:
        rid = _erase(stack2, "toy-09")
        done = stack2.wait_status(rid, ("completed", "failed"), timeout=120)
        assert done["status"] == "completed", done
    finally:
        # uvicorn's supervisor may already have replaced the stopped worker (its health ping times out
        # after a few seconds on a loaded machine); then there is nothing to resume.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGCONT)


def test_new_replica_is_not_ready_until_it_serves_the_current_version(stack2: Stack, tmp_path: Path) -> None:
    with stack2.client() as c:
        current = c.get("/v1/models/toy").json()["serving_version"]
    port = free_port()
    env = {**os.environ, "LETHE_DATABASE_URL": stack2.db_url, "LETHE_DATA_DIR": str(stack2.data_dir),
           "LETHE_REDIS_URL": f"{REDIS}/13", "LETHE_BROKER_URL": f"{REDIS}/13",
           "LETHE_SUBJECT_KEY_SECRET": "integration-secret", "LETHE_POLL_INTERVAL_S": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 120  # a cold uvicorn import + model load on 2 busy cores
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{url}/readyz", timeout=5)
                seen.append(r.status_code)
                if r.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        assert seen and seen[-1] == 200, seen[-5:]
        with stack2.client() as c:
            history = [(v["version"], v["method"], v["state"]) for v in c.get("/v1/models/toy").json()["versions"]]
        assert r.json()["models"]["toy"] == current, history
        p = httpx.post(f"{url}/v1/models/toy/predict", json=X, headers=stack2.headers, timeout=30)
        assert p.status_code == 200 and p.json()["model_version"] == current, p.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
