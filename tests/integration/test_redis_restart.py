"""Nothing acknowledged is ever lost: a Redis restart ends with the request completed, never dropped.

Each test runs its own throw-away ``redis-server`` (no RDB, no AOF), so killing it with SIGKILL and
starting it again on the same port loses every queued and unacknowledged Celery message. The erasure
request is durable in the DB (PostgreSQL here), and the reconciler (Celery beat every
``LETHE_RECONCILE_INTERVAL_S``) must re-send its work once the broker is back.

Three moments for the restart:

* the unlearning message sits in Redis (no consumer connected) and is lost with it;
* the worker already holds the message, unacknowledged, waiting in its batch window;
* Redis is down when the request arrives: the API must still answer 202.
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
from tests.integration.procs import frozen, worker_pids

pytestmark = pytest.mark.integration

PREDICT_BODY = {"inputs": [{"x": [0.5] * 16}]}
COMPLETE_TIMEOUT_S = 240
WORKER_READY = r"celery@\S+ ready\."
UNLEARN_RECEIVED = r"Task lethe\.unlearn_model\[[0-9a-f-]+\] received"
RECONCILED = r"Task lethe\.reconcile\[[0-9a-f-]+\] succeeded"
# The worker's consumer (not beat, which logs "in 4.0 seconds...") failed to reconnect at least twice:
# its next try is >= 4 s away.
WORKER_BACKING_OFF = r"(?m)^Trying again in ([4-9]|[1-9][0-9]+)\.[0-9]{2} seconds\.\.\. \([0-9]+/[0-9]+\)"


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

    def client(self):  # noqa: ANN201
        import redis

        return redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=2)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        self.starts += 1
        with open(self.workdir / "redis.log", "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"redis-server exited early:\n{self.log()}"
            if self.ping():
                return
            time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not answer:\n{self.log()}")

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
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
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""


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


@pytest.fixture
def lethe(tmp_path: Path, private_redis: PrivateRedis, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """`lethe run` on a fresh PostgreSQL DB, brokered by the private Redis; the worker is connected."""
    data_dir = tmp_path / "lethe"
    data_dir.mkdir()
    # start_stack flushes 6379/{redis_db} (which these tests never use): one index per test that no other
    # test touches (1, 2), so `make test`'s parallel integration phase never flushes a neighbour's broker.
    redis_db = 1 if "in_worker" in request.node.name else 2
    # A long batch window: the job is still waiting (in Redis or in the worker's window) at the kill.
    stack, cleanup = start_stack(data_dir, "postgresql", redis_db=redis_db, api_workers=1,
                                 extra_env={"LETHE_REDIS_URL": private_redis.url,
                                            "LETHE_BROKER_URL": private_redis.url,
                                            "LETHE_BATCH_WINDOW_S": "6",
                                            # Beat sends only the reconciler (every 3 s) during the test, so
                                            # the worker's state at each kill is known (see _after_reconcile).
                                            "LETHE_HOUSEKEEPING_INTERVAL_S": "3600"})
    try:
        # /readyz covers the API only; the Celery worker must be consuming too before any kill.
        _wait_log(stack, private_redis, WORKER_READY)
        yield stack
    finally:
        cleanup()


# ---------------------------------------------------------------- helpers


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
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared in the log{_diag(stack, r)}")


def _after_reconcile(stack: Stack, r: PrivateRedis) -> None:
    """Return right after a reconcile task finished: the worker holds no message for ~3 s."""
    _wait_log(stack, r, RECONCILED, since=_log_size(stack), timeout=60)


def _diag(stack: Stack, r: PrivateRedis) -> str:
    alive = "alive" if stack.proc.poll() is None else f"exited rc={stack.proc.returncode}"
    path = stack.data_dir / "run.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    # Log records only (tracebacks make the plain tail useless), then the raw tail.
    records = [ln for ln in text.splitlines()
               if re.search(r" (CRITICAL|ERROR|WARNING|INFO) (celery\.(worker|beat|apps)|lethe|kombu)", ln)]
    return (f"\n--- lethe run ({alive}): log records ---\n" + "\n".join(records[-60:])
            + f"\n--- lethe run: tail ---\n{stack.logs()[-2500:]}\n--- private redis ---\n{r.log()}")


def _serving_version(stack: Stack) -> int:
    with stack.client() as c:
        return c.get("/v1/models/toy").json()["serving_version"]


def _submit(stack: Stack, r: PrivateRedis, subject: str, *, timeout: float = 30) -> str:
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=timeout) as c:
        t0 = time.monotonic()
        created = c.post("/v1/erasure-requests", json={"subject_id": subject, "reason": "Art. 17"})
        took = time.monotonic() - t0
    assert created.status_code == 202, f"{created.status_code} after {took:.1f}s: {created.text}{_diag(stack, r)}"
    return created.json()["id"]


def _status(stack: Stack, rid: str) -> dict:
    with stack.client() as c:
        return c.get(f"/v1/erasure-requests/{rid}").json()


def _assert_completed_and_served(stack: Stack, r: PrivateRedis, rid: str, subject: str,
                                 version_before: int) -> int:
    """The request completed with a new version, the API serves it, the audit chain verifies."""
    try:
        done = stack.wait_status(rid, ("completed", "failed", "cancelled"), timeout=COMPLETE_TIMEOUT_S)
    except (AssertionError, httpx.HTTPError) as e:
        raise AssertionError(f"request {rid} never finished: {e!r}{_diag(stack, r)}") from None
    assert done["status"] == "completed", f"{done}{_diag(stack, r)}"
    result = done["result"]["models"]["toy"]
    assert result["version_before"] == version_before, result
    assert result["version_after"] is not None and result["version_after"] > version_before, result
    try:
        with stack.client() as c:
            predicted = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
            assert predicted.status_code == 200, predicted.text
            assert predicted.json()["model_version"] == result["version_after"], predicted.json()
            assert predicted.headers["x-model-version"] == str(result["version_after"])
            verify = c.get("/v1/audit/verify").json()
            assert verify["ok"] is True, verify
            types = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
            assert types[0] == "erasure_requested" and types[-1] == "erasure_completed", types
            assert c.get(f"/v1/subjects/{subject}").json()["samples"] == {}
    except httpx.HTTPError as e:
        raise AssertionError(f"API unreachable after completion: {e!r}{_diag(stack, r)}") from None
    return result["version_after"]


def _assert_stack_survives_and_serves_a_new_request(stack: Stack, r: PrivateRedis, subject: str,
                                                    version_before: int, *, settle_s: float = 10) -> None:
    """The restart left no lasting damage: `lethe run` (API + worker) is up and a new request completes."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:  # a crashed worker takes `lethe run` down within a few seconds
        assert stack.proc.poll() is None, f"lethe run exited after the Redis restart{_diag(stack, r)}"
        time.sleep(0.5)
    rid = _submit(stack, r, subject)
    _assert_completed_and_served(stack, r, rid, subject, version_before)
    assert stack.proc.poll() is None, f"lethe run exited{_diag(stack, r)}"


# ---------------------------------------------------------------- tests


def test_message_lost_with_redis_is_re_sent_and_the_request_completes(lethe: Stack,
                                                                      private_redis: PrivateRedis) -> None:
    """202 given while the message sits in Redis; Redis dies and comes back empty: the request completes.

    To lose the message *in Redis* (not in the worker), it is sent while the worker's consumer is
    disconnected and backing off (checked in the log), and frozen (SIGSTOP) until Redis has died
    with the message in it (checked by the queue's length just before the kill).
    """
    stack, r = lethe, private_redis
    version_before = _serving_version(stack)
    _after_reconcile(stack, r)
    since = _log_size(stack)
    r.kill()  # an idle worker: nothing in flight
    _wait_log(stack, r, WORKER_BACKING_OFF, since=since, timeout=60)
    # Frozen while disconnected, the worker cannot reconnect and take the message: it is in Redis
    # for sure when Redis dies (no timing race, no skip).
    with frozen(worker_pids(stack.proc.pid)):
        r.start()  # the API reconnects on publish
        rid = _submit(stack, r, "toy-03")
        queued = r.client().llen("unlearn")
        r.kill()
    assert queued >= 1, "the message was not in Redis when it died"
    at_kill = _status(stack, rid)
    assert at_kill["status"] not in ("completed", "failed"), f"finished before the kill: {at_kill}"
    time.sleep(2)
    r.start()
    assert r.starts == 3
    version_after = _assert_completed_and_served(stack, r, rid, "toy-03", version_before)
    _assert_stack_survives_and_serves_a_new_request(stack, r, "toy-07", version_after)


def test_task_in_worker_when_redis_restarts_completes_and_the_stack_survives(lethe: Stack,
                                                                             private_redis: PrivateRedis) -> None:
    """202, the worker receives the message and waits in its batch window; Redis dies and comes back empty.

    The request must complete, and the stack must go on serving: a later request completes too. (Celery
    5.7 / kombu 5.7 may exit here with an "Unrecoverable error" while restoring the unacked message;
    ``lethe run`` then restarts the worker and the reconciler re-sends the work.)
    """
    stack, r = lethe, private_redis
    version_before = _serving_version(stack)
    _after_reconcile(stack, r)  # so that the unlearning task is the only one in flight at the kill
    since = _log_size(stack)
    rid = _submit(stack, r, "toy-03")
    _wait_log(stack, r, UNLEARN_RECEIVED, since=since, timeout=60)
    time.sleep(1)  # well inside the 6 s batch window: the worker sits idle on its sockets, message unacked
    r.kill()  # the unacked message (and Redis' own unacked copy) is gone with it
    at_kill = _status(stack, rid)
    assert at_kill["status"] not in ("completed", "failed"), f"finished before the kill: {at_kill}"
    time.sleep(2)
    r.start()
    version_after = _assert_completed_and_served(stack, r, rid, "toy-03", version_before)
    _assert_stack_survives_and_serves_a_new_request(stack, r, "toy-07", version_after)


def test_request_submitted_while_redis_is_down_is_accepted_and_completes(lethe: Stack,
                                                                        private_redis: PrivateRedis) -> None:
    """Broker down at submit time: the API still answers 202 (the DB holds the request), and it completes."""
    stack, r = lethe, private_redis
    version_before = _serving_version(stack)
    _after_reconcile(stack, r)
    r.kill()  # an idle worker: nothing in flight
    assert not r.ping()
    # A generous client timeout: the API may retry the publish a little, but must neither hang nor fail.
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=120) as c:
        t0 = time.monotonic()
        created = c.post("/v1/erasure-requests", json={"subject_id": "toy-04", "reason": "Art. 17"},
                         headers={"Idempotency-Key": "redis-down-1"})
        submit_s = time.monotonic() - t0
        assert created.status_code == 202, f"{created.status_code} after {submit_s:.1f}s: {created.text}" \
                                           f"{_diag(stack, r)}"
        rid = created.json()["id"]
        # Reads do not need the broker.
        while_down = c.get(f"/v1/erasure-requests/{rid}")
        assert while_down.status_code == 200 and while_down.json()["status"] not in ("completed", "failed")
        # A client retry with the same key while Redis is still down replays the same request.
        replay = c.post("/v1/erasure-requests", json={"subject_id": "toy-04", "reason": "Art. 17"},
                        headers={"Idempotency-Key": "redis-down-1"})
        assert replay.status_code == 202 and replay.json()["id"] == rid, replay.text
    time.sleep(3)
    r.start()
    version_after = _assert_completed_and_served(stack, r, rid, "toy-04", version_before)
    with stack.client() as c:
        assert len(c.get("/v1/erasure-requests").json()["items"]) == 1
    _assert_stack_survives_and_serves_a_new_request(stack, r, "toy-07", version_after)
