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
REPLICA_TTL_S = 10  # of the replica the DB-cut test starts (the stack's own replicas: 4 s)


@pytest.fixture(scope="module")
def stack2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Keep the newest tainted version's weights (issue 23), so that the refusals to roll back to it
    # and to load it are reached on this stack; the next completion purges it.
    s, cleanup = start_stack(tmp_path_factory.mktemp("replicas"), "postgresql", redis_db=13, api_workers=2,
                             extra_env={"LETHE_KEEP_TAINTED_VERSIONS": "1"})
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


def _set_serving(s: Stack, version: int) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(s.db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE model SET serving_version = :v WHERE name = 'toy'"), {"v": version})
    engine.dispose()


def test_rollback_to_tainted_version_is_refused(stack2: Stack) -> None:
    rid = _erase(stack2, "toy-08")
    done = stack2.wait_status(rid, ("completed", "failed"))
    assert done["status"] == "completed"
    before, after = done["result"]["models"]["toy"]["version_before"], done["result"]["models"]["toy"]["version_after"]
    with stack2.client() as c:
        versions = {v["version"]: v for v in c.get("/v1/models/toy").json()["versions"]}
        assert versions[before]["state"] == "verified" and versions[before]["tainted_by_requests"] >= 1  # kept
        r = c.post("/v1/models/toy/rollback", json={"version": before})
        assert r.status_code == 409 and r.json()["code"] == "tainted_version", r.text

    # A rogue write makes the tainted version the serving one: no replica loads it; they keep
    # answering with the clean version and report not ready until the serving version is clean.
    _set_serving(stack2, before)
    try:
        time.sleep(3)  # > LETHE_POLL_INTERVAL_S (1): every replica has looked
        with stack2.client() as c:
            answers = [c.post("/v1/models/toy/predict", json=X) for _ in range(8)]
            ready = [c.get("/readyz").status_code for _ in range(8)]
        assert all(a.status_code == 200 and a.json()["model_version"] == after for a in answers)
        assert set(ready) == {503}, ready
    finally:
        _set_serving(stack2, after)
    deadline = time.monotonic() + 30
    with stack2.client() as c:
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert c.get("/readyz").status_code == 200

    # The next completion purges the (then older) tainted version: weights deleted, audited.
    done = stack2.wait_status(_erase(stack2, "toy-12"), ("completed", "failed"))
    assert done["status"] == "completed", done
    with stack2.client() as c:
        versions = {v["version"]: v for v in c.get("/v1/models/toy").json()["versions"]}
        assert versions[before]["state"] == "purged"
        r = c.post("/v1/models/toy/rollback", json={"version": before})
        assert r.status_code == 409 and r.json()["code"] == "version_purged"
        purged = c.get("/v1/audit/events", params={"type": "artifact_purged"}).json()["items"]
        assert any(e["payload"]["version"] == before and len(e["payload"]["sha256"]) == 64 for e in purged)
    weights = sorted((stack2.data_dir / "artifacts" / "toy").glob("v*.safetensors"))
    assert weights and not [p for p in weights if p.name.startswith(f"v{before}-")], weights


def test_opendsr_completed_callback_reaches_a_real_receiver_signed(stack2: Stack) -> None:
    """A controller's receiver on loopback gets the OpenDSR callbacks of a real completion, the
    last one ``completed``, each signed RSA-SHA256 over the raw body with the key whose
    certificate the processor publishes (spec 8.5-8.8)."""
    import json
    import uuid
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from app.core.signing import verify_rsa

    got: list[tuple[bytes, dict[str, str]]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append((self.rfile.read(int(self.headers["Content-Length"])), dict(self.headers)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:  # noqa: ANN002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback_url = f"http://127.0.0.1:{server.server_address[1]}/dsr-callbacks"
    sid = str(uuid.uuid4())
    try:
        with stack2.client() as c:
            r = c.post("/opendsr/v2/requests", json={
                "regulation": "gdpr", "subject_request_id": sid, "subject_request_type": "erasure",
                "submitted_time": "2026-12-01T10:00:00Z", "api_version": "2.0",
                "subject_identities": [{"identity_type": "controller_customer_id", "identity_value": "toy-13",
                                        "identity_format": "raw"}],
                "status_callback_urls": [callback_url]})
            assert r.status_code == 201, r.text
            cert = c.get("/opendsr/cert.pem").content
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(json.loads(b).get("request_status") == "completed"
                                                      for b, _ in got):
            time.sleep(0.5)
    finally:
        server.shutdown()
    statuses = [json.loads(b)["request_status"] for b, _ in got]
    assert "completed" in statuses, statuses
    for body, headers in got:
        assert verify_rsa(cert, body, headers["X-OpenDSR-Signature"]), body
        assert not verify_rsa(cert, body + b" ", headers["X-OpenDSR-Signature"])
        parsed = json.loads(body)
        assert parsed["subject_request_id"] == sid and parsed["status_callback_url"] == callback_url
        assert "toy-13" not in body.decode()  # no identity data in a callback


def test_held_out_only_subject_and_a_second_request_during_a_running_job(stack2: Stack) -> None:
    """On the running stack: a subject held only in held-out samples completes without a new
    version; a second request for a subject while the first one's job runs completes too."""
    with stack2.client() as c:
        serving = c.get("/v1/models/toy").json()["serving_version"]
        assert set(c.get("/v1/subjects/toy-05").json()["samples"]["toy"]) == {"holdout"}
    done = stack2.wait_status(_erase(stack2, "toy-05"), ("completed", "failed"))
    assert done["status"] == "completed" and done["result"]["models"]["toy"]["method"] == "none", done
    with stack2.client() as c:
        assert c.get("/v1/models/toy").json()["serving_version"] == serving  # nothing to retrain
        assert c.get("/v1/subjects/toy-05").json()["samples"] == {}  # the rows are gone

    first = _erase(stack2, "toy-14")
    running = stack2.wait_status(first, ("running", "verifying", "deploying", "completed", "failed"))
    assert running["status"] in ("running", "verifying", "deploying"), running  # the job has it
    second = _erase(stack2, "toy-14")
    assert second != first
    a = stack2.wait_status(first, ("completed", "failed"))
    b = stack2.wait_status(second, ("completed", "failed"))
    assert a["status"] == b["status"] == "completed", (a, b)
    assert b["result"]["models"]["toy"]["version_after"] == a["result"]["models"]["toy"]["version_after"]
    with stack2.client() as c:
        assert c.get("/v1/subjects/toy-14").json()["samples"] == {}


def _replica_pids(s: Stack) -> list[int]:
    with s.client() as c:
        return sorted({int(r["replica_id"].split("-")[-2]) for r in c.get("/v1/models/toy").json()["replicas"]})


def test_silent_replica_does_not_block_completion(stack2: Stack) -> None:
    pids = _replica_pids(stack2)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGSTOP)  # its heartbeat stops; it drops out after the TTL
    try:
        # Proved silent before the erasure: it has left the live set (the other replica is still in it).
        deadline = time.monotonic() + 60
        while pids[0] in (live := _replica_pids(stack2)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert pids[0] not in live and pids[1] in live, (pids, live)
        rid = _erase(stack2, "toy-09")
        done = stack2.wait_status(rid, ("completed", "failed"), timeout=120)
        assert done["status"] == "completed", done
    finally:
        # uvicorn's supervisor may already have replaced the stopped worker (its health ping times out
        # after a few seconds on a loaded machine); then there is nothing to resume.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pids[0], signal.SIGCONT)


def test_new_replica_is_not_ready_until_it_serves_the_current_version(stack2: Stack, tmp_path: Path) -> None:
    """...and a replica cut off from the database (its own connection only, through a loopback
    proxy) stops answering predictions (503 ``model_not_ready``) and fails ``/readyz`` once it has
    not confirmed the serving version for ``LETHE_REPLICA_TTL_S``, then recovers when the
    database is back."""
    from urllib.parse import urlsplit

    from tests.integration.tcpproxy import TcpProxy

    with stack2.client() as c:
        current = c.get("/v1/models/toy").json()["serving_version"]
    db = urlsplit(stack2.db_url)
    proxy = TcpProxy((db.hostname or "127.0.0.1", db.port or 5432))
    port = free_port()
    env = {**os.environ, "LETHE_DATABASE_URL": stack2.db_url.replace(db.netloc, f"{db.username}@127.0.0.1:{proxy.port}"),
           "LETHE_DATA_DIR": str(stack2.data_dir),
           "LETHE_REDIS_URL": f"{REDIS}/13", "LETHE_BROKER_URL": f"{REDIS}/13",
           "LETHE_SUBJECT_KEY_SECRET": "integration-secret", "LETHE_POLL_INTERVAL_S": "1",
           # This replica's own TTL: long against its 1 s DB poll and the 0.2 s probe interval, so the
           # probes right after the cut certainly fall before it runs out (they must see 200, not 503).
           "LETHE_REPLICA_TTL_S": str(REPLICA_TTL_S), "LETHE_HEARTBEAT_INTERVAL_S": "0.5",
           # The API key stays cached through the outage, so the 503 seen is the model's, not auth's.
           "LETHE_KEY_CACHE_TTL_S": "600"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    seen: list[int] = []

    def until(check, timeout: float) -> list:  # noqa: ANN001
        trail: list = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                trail.append(check())
                if trail[-1] is True:
                    break
            except httpx.HTTPError as exc:
                trail.append(type(exc).__name__)
            time.sleep(0.2)
        return trail

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

        def stale() -> bool | tuple:
            p = httpx.post(f"{url}/v1/models/toy/predict", json=X, headers=stack2.headers, timeout=10)
            ready = httpx.get(f"{url}/readyz", timeout=10).status_code
            code = p.json().get("code") if p.status_code != 200 else None
            return (p.status_code, code, ready) == (503, "model_not_ready", 503) or (p.status_code, code, ready)

        assert stale() == (200, None, 200)  # fresh right before the cut
        proxy.cut()  # this replica alone loses the database; the stack keeps it
        cut_at = time.monotonic()
        first = stale()  # right after the cut: it synced <= 1 s ago, the TTL is 10 s
        first_s = time.monotonic() - cut_at
        assert first_s < REPLICA_TTL_S / 2, f"the first probe took {first_s:.1f} s: the machine stalled"
        assert first == (200, None, 200), first  # still answers while its last sync is within the TTL
        trail = until(stale, 60)
        stale_after_s = time.monotonic() - cut_at
        assert trail and trail[-1] is True, trail[-5:]
        # ...and stops once the TTL ran out, not at the first failed sync (its last sync was about a
        # poll, 1 s, before the cut; half the TTL leaves room for a starved poll thread)
        assert stale_after_s >= REPLICA_TTL_S / 2, (stale_after_s, trail[:3])

        proxy.restore()

        def recovered() -> bool | tuple:
            ready = httpx.get(f"{url}/readyz", timeout=10).status_code
            p = httpx.post(f"{url}/v1/models/toy/predict", json=X, headers=stack2.headers, timeout=10)
            return (ready, p.status_code) == (200, 200) or (ready, p.status_code)

        trail = until(recovered, 60)
        assert trail and trail[-1] is True, trail[-5:]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proxy.close()


def test_after_every_erasure_on_this_stack_disk_and_database_agree(stack2: Stack) -> None:
    """Runs last in this module: after its erasures (a silent replica, a replica cut off from the
    DB, a kept tainted version...), every version the database can still serve or roll back to has
    its weights, the to-delete list is drained and no file is left that no row references."""
    from tests.integration.consistency import disagreements

    with stack2.client() as c:
        states = {v["state"] for v in c.get("/v1/models/toy").json()["versions"]}
    assert "purged" in states and states - {"purged"}, states
    assert disagreements(stack2.db_url, stack2.data_dir) == []
