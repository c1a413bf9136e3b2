"""Nothing acknowledged is ever lost: PostgreSQL blips end with every request completed, never dropped.

A Lethe stack (API + Celery worker + beat) runs on a private PostgreSQL database. While erasure jobs
run, the test takes the database away from it, from the admin DB:

* blips: ``pg_terminate_backend`` on every backend of the stack's database, every
  ``BLIP_INTERVAL_S``, so the API's, the worker's and the housekeeping's connections die
  mid-transaction (a reconnect succeeds at once);
* an outage: ``ALLOW_CONNECTIONS false`` plus the same termination, for ``OUTAGE_S``, so every
  query and every reconnect fails until it ends.

Afterwards every acknowledged request must have completed (the job lease expires and the reconciler
resumes a job whose connection was killed), exactly once, and the version history must not fork: one
job at a time per model, each ``ModelVersion``'s parent is the previous version, the result's
``version_after`` is what the model serves and what predict answers with, and the audit chain
verifies. While the DB is gone the API may refuse a request, but only with a problem+json 5xx, never
a hang; a client that retries its POST with the same ``Idempotency-Key`` gets one request.

Each stack test prints (``-s``) and writes ``blip_report.json`` in its tmp dir: HTTP outcomes seen,
job starts / resumes / fencings.

Three product bugs found by these tests, now fixed and kept as regressions: DB outages counted as
job deliveries, so a few of them failed an erasure for good; a DB error in a route closed the
client's keep-alive connection after a 500 (now a 503 problem+json from a specific handler); and the
request session's teardown raised when its connection died after the handler.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_URL, create_pg_database
from tests.integration.conftest import Stack, start_stack

pytestmark = pytest.mark.integration

ADMIN_DB = PG_URL.replace("+psycopg", "").rsplit("/", 1)[0] + "/postgres"
REDIS_DB = 15
PREDICT_BODY = {"inputs": [{"x": [0.5] * 16}]}
ACTIVE = ("running", "verifying", "deploying")
TERMINAL = ("completed", "failed", "cancelled", "rejected", "no_data")
BLIP_INTERVAL_S = 0.25
BLIP_MIN_WINDOW_S = 6.0  # the first blip window, from right after the first submit
BLIP_AFTER_SECOND_S = 3.0  # ... and at least this long after the second request was accepted
BLIP_ACTIVE_WINDOW_S = 3.0  # a second window while the second request's job runs
OUTAGE_S = 8.0  # longer than LETHE_JOB_LEASE_S (6) and the replica TTL (4) that start_stack sets
COMPLETE_TIMEOUT_S = 300
HTTP_TIMEOUT_S = 30  # a request that takes longer than this while the DB is gone is a hang
MAX_JOB_ATTEMPTS = 3  # the default of LETHE_MAX_JOB_ATTEMPTS


# ---------------------------------------------------------------- taking the DB away


def _admin():  # noqa: ANN202
    import psycopg

    return psycopg.connect(ADMIN_DB, autocommit=True, connect_timeout=10)


def _terminate(conn: Any, db_name: str) -> int:
    rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,)).fetchall()
    return sum(1 for (ok,) in rows if ok)


class Blipper:
    """Terminates every backend of one database every ``interval_s`` while started.

    With ``refuse=True`` the database also refuses new connections (``ALLOW_CONNECTIONS false``,
    which binds superusers too) until :meth:`stop`: an outage rather than a blip.
    """

    def __init__(self, db_name: str, interval_s: float = BLIP_INTERVAL_S, refuse: bool = False) -> None:
        self.db_name, self.interval_s, self.refuse = db_name, interval_s, refuse
        self.rounds = 0
        self.killed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.refuse:
            with _admin() as conn:  # the outage holds from the moment start() returns
                conn.execute(f'ALTER DATABASE "{self.db_name}" WITH ALLOW_CONNECTIONS false')
                self.killed += _terminate(conn, self.db_name)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="db-blipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.refuse:
            with _admin() as conn:
                conn.execute(f'ALTER DATABASE "{self.db_name}" WITH ALLOW_CONNECTIONS true')

    def _run(self) -> None:
        with _admin() as conn:
            while not self._stop.is_set():
                try:
                    self.killed += _terminate(conn, self.db_name)
                    self.rounds += 1
                except Exception as exc:  # noqa: BLE001 - recorded, the test asserts on it
                    self.errors.append(repr(exc))
                self._stop.wait(self.interval_s)


# ---------------------------------------------------------------- HTTP, tolerant of a DB that is gone


class Observer:
    """Every HTTP outcome seen, by label: status codes, exceptions, 5xx answers that are not problem+json."""

    def __init__(self) -> None:
        self.seen: dict[str, Counter] = {}
        self.bad_5xx: list[str] = []
        self.hangs: list[str] = []
        self.problems: Counter = Counter()  # (status, code) of every problem+json 5xx

    def record(self, label: str, outcome: httpx.Response | Exception) -> None:
        counter = self.seen.setdefault(label, Counter())
        if isinstance(outcome, httpx.TimeoutException):
            counter["timeout"] += 1
            self.hangs.append(f"{label}: {outcome!r}")
        elif isinstance(outcome, Exception):
            counter[type(outcome).__name__] += 1
        else:
            counter[str(outcome.status_code)] += 1
            if outcome.status_code >= 500:
                if _is_problem(outcome):
                    self.problems[f"{outcome.status_code} {outcome.json()['code']}"] += 1
                else:
                    self.bad_5xx.append(f"{label}: {outcome.status_code} {outcome.headers.get('content-type')} "
                                        f"{outcome.text[:300]!r}")

    def summary(self) -> dict[str, Any]:
        return {"by_call": {label: dict(c) for label, c in self.seen.items()}, "problems_5xx": dict(self.problems)}


def _is_problem(r: httpx.Response) -> bool:
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return False
    try:
        body = r.json()
    except ValueError:
        return False
    return body.get("status") == r.status_code and bool(body.get("code")) and bool(body.get("detail"))


def _logs(stack: Stack) -> str:
    return f"\n--- run.log (tail) ---\n{stack.logs()}"


def _get_status(c: httpx.Client, obs: Observer, rid: str, label: str) -> dict[str, Any] | None:
    try:
        r = c.get(f"/v1/erasure-requests/{rid}")
    except httpx.HTTPError as exc:
        obs.record(label, exc)
        return None
    obs.record(label, r)
    return r.json() if r.status_code == 200 else None


def _predict(c: httpx.Client, obs: Observer, label: str) -> None:
    try:
        obs.record(label, c.post("/v1/models/toy/predict", json=PREDICT_BODY))
    except httpx.HTTPError as exc:
        obs.record(label, exc)


def _try_submit(c: httpx.Client, obs: Observer, subject: str, key: str, label: str) -> httpx.Response | None:
    """One POST; None on a 5xx or a connection error (the caller retries with the same key)."""
    try:
        r = c.post("/v1/erasure-requests", json={"subject_id": subject, "reason": "db blip test"},
                   headers={"Idempotency-Key": key})
    except httpx.HTTPError as exc:
        obs.record(label, exc)
        return None
    obs.record(label, r)
    return r if r.status_code < 500 else None


def _submit(c: httpx.Client, obs: Observer, subject: str, key: str, label: str, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (r := _try_submit(c, obs, subject, key, label)) is not None:
            return r
        time.sleep(0.2)
    raise AssertionError(f"{label}: never accepted in {timeout:.0f}s; seen {obs.summary()}")


def _poll_while(c: httpx.Client, obs: Observer, rids: list[str], seen: list[tuple[str, str]], label: str,
                until: Callable[[], bool], max_s: float) -> bool:
    """Poll statuses (and predict) until ``until()`` or ``max_s``; statuses go to ``seen``."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline:
        for rid in rids:
            if (body := _get_status(c, obs, rid, f"GET status ({label})")) is not None:
                seen.append((rid, body["status"]))
        _predict(c, obs, f"predict ({label})")
        if until():
            return True
        time.sleep(0.1)
    return False


def _wait_terminal(stack: Stack, obs: Observer, rids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
        while time.monotonic() < deadline:
            for rid in rids:
                if (body := _get_status(c, obs, rid, "GET status (after)")) is not None:
                    last[rid] = body
            if len(last) == len(rids) and all(b["status"] in TERMINAL for b in last.values()):
                return last
            time.sleep(0.5)
    raise AssertionError(
        f"requests did not end in {timeout:.0f}s (stuck, or silently dropped): "
        f"{ {rid: (b['status'], b['stage'], b['models'], b['error']) for rid, b in last.items()} }" + _logs(stack))


def _distinct(seen: list[tuple[str, str]], rid: str) -> list[str]:
    return list(dict.fromkeys(st for r, st in seen if r == rid))


# ---------------------------------------------------------------- what must hold afterwards


def _check_nothing_lost_no_fork(stack: Stack, obs: Observer, requests: dict[str, tuple[str, str]],
                                report: dict[str, Any], tmp_path: Path) -> None:
    """``requests``: request id -> (subject, idempotency key). All must have completed, exactly once."""
    rids = list(requests)
    done = _wait_terminal(stack, obs, rids, COMPLETE_TIMEOUT_S)
    report["final"] = {rid: {"status": b["status"], "error": b["error"]} for rid, b in done.items()}
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
        for kind in ("job_started", "job_resumed", "job_fenced", "erasure_failed"):
            report[kind] = len(c.get("/v1/audit/events", params={"type": kind, "limit": 1000}).json()["items"])
        report["resumes (job, delivery)"] = [
            (e["payload"]["job_id"][:8], e["payload"]["delivery"])
            for e in c.get("/v1/audit/events", params={"type": "job_resumed", "limit": 1000}).json()["items"]]
        report["http"] = obs.summary()
        (tmp_path / "blip_report.json").write_text(json.dumps(report, indent=2, default=str))
        print("\nDB blip report:", json.dumps(report, indent=2, default=str))

        # While the DB was gone: refusals are problem+json 5xx, never a hang or a bare 500.
        assert not obs.hangs, f"the API hung while the DB was gone: {obs.hangs}\n{report}" + _logs(stack)
        assert not obs.bad_5xx, f"5xx without a problem+json body: {obs.bad_5xx}" + _logs(stack)

        # Nothing silently dropped: every acknowledged request ended completed, or failed visibly.
        for rid, body in done.items():
            assert body["status"] in ("completed", "failed"), (rid, body)
            if body["status"] == "failed":
                assert body["error"], f"{rid} failed without an error: {body}" + _logs(stack)
                events = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
                assert "erasure_failed" in events, (rid, events)
                continue
            assert body["percent"] == 100, body
            assert [(m["model"], m["status"]) for m in body["models"]] == [("toy", "done")], body
        completed = [rid for rid in rids if done[rid]["status"] == "completed"]

        # Exactly once: one request per subject; replaying an idempotency key returns the same one.
        for rid, (subject, key) in requests.items():
            replay = c.post("/v1/erasure-requests", json={"subject_id": subject, "reason": "db blip test"},
                            headers={"Idempotency-Key": key})
            assert replay.status_code == 202 and replay.json()["id"] == rid, replay.text
            assert replay.headers.get("idempotent-replayed") == "true", dict(replay.headers)
            items = c.get("/v1/erasure-requests", params={"subject_id": subject}).json()["items"]
            assert [i["id"] for i in items] == [rid], (subject, items)
            events = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
            assert events.count("erasure_requested") == 1, (rid, events)
            assert events.count("erasure_completed") == (1 if rid in completed else 0), (rid, events)
            if rid in completed:
                held = c.get(f"/v1/subjects/{subject}").json()
                assert held["samples"] == {} and held["suppressed"] is True, held

        # No fork: a linear history, each version's parent the previous one, one job per new version.
        model = c.get("/v1/models/toy").json()
        history = [(v["version"], v["parent"], v["method"], v["state"]) for v in model["versions"]]
        numbers = [v["version"] for v in model["versions"]]
        assert numbers == list(range(1, len(numbers) + 1)), history
        assert all(v["parent"] == prev for prev, v in zip(numbers, model["versions"][1:])), history
        serving = model["serving_version"]
        assert serving == numbers[-1], (serving, history)
        results = {rid: done[rid]["result"]["models"]["toy"] for rid in completed}
        for res in results.values():
            assert res["version_after"] == res["version_before"] + 1, (results, history)
        by_job = {res["job_id"]: res["version_after"] for res in results.values()}
        assert len(set(by_job.values())) == len(by_job), (results, history)  # one new version per job
        if len(completed) == len(rids):
            assert max(by_job.values()) == serving == len(by_job) + 1, (results, history)
            assert report["job_started"] == len(by_job), (report, results)

        # Completion means the API serves the new version; the audit chain still verifies.
        deadline = time.monotonic() + 60
        while True:
            p = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
            if p.status_code == 200 or time.monotonic() > deadline:
                break
            assert p.status_code == 503 and _is_problem(p), p.text  # a replica re-syncing after the outage
            time.sleep(0.5)
        assert p.status_code == 200 and p.json()["model_version"] == serving, p.text + _logs(stack)
        assert p.headers["x-model-version"] == str(serving)
        verify = c.get("/v1/audit/verify").json()
        assert verify["ok"] is True, verify

    # Every acknowledged request must complete: an interruption by the database is not a delivery
    # (workers/pipeline.py _run_jobs), so blips never exhaust max_job_attempts.
    failed = {rid: done[rid]["error"] for rid in rids if rid not in completed}
    assert not failed, f"requests failed after DB blips: {failed}; report: {report}" + _logs(stack)


def _baseline(c: httpx.Client, stack: Stack, subjects: tuple[str, ...]) -> None:
    before = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
    assert before.status_code == 200 and before.json()["model_version"] == 1, before.text + _logs(stack)
    for subject in subjects:
        assert c.get(f"/v1/subjects/{subject}").json()["samples"]["toy"]["train"] > 0, subject


# ---------------------------------------------------------------- the tests


@pytest.mark.timeout(1200)
def test_connection_kills_mid_job_lose_nothing_and_never_fork(tmp_path: Path) -> None:
    """Backends killed every 0.25 s from right after the first submit, and again while the second job runs."""
    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=REDIS_DB, api_workers=1)
    db_name = stack.db_url.rsplit("/", 1)[1]
    obs, blipper = Observer(), Blipper(db_name)
    seen: list[tuple[str, str]] = []
    report: dict[str, Any] = {"db": db_name, "mode": f"pg_terminate_backend every {BLIP_INTERVAL_S}s"}
    try:
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
            _baseline(c, stack, ("toy-02", "toy-03"))
            first = c.post("/v1/erasure-requests", json={"subject_id": "toy-02", "reason": "db blip test"},
                           headers={"Idempotency-Key": "blip-first"})
            assert first.status_code == 202, first.text + _logs(stack)
            rid1 = first.json()["id"]

            # Window 1 starts right after the first submit. The second request arrives inside it, once
            # the first one's job runs (so it needs a job of its own, on top of the first's version).
            t0 = time.monotonic()
            blipper.start()
            _poll_while(c, obs, [rid1], seen, "during blip",
                        until=lambda: any(st in ACTIVE + TERMINAL for _, st in seen), max_s=60)
            second = _submit(c, obs, "toy-03", "blip-second", "POST erasure (during blip)", timeout=120)
            assert second.status_code == 202, second.text + _logs(stack)
            rid2 = second.json()["id"]
            t2 = time.monotonic()
            _poll_while(c, obs, [rid1, rid2], seen, "during blip",
                        until=lambda: (time.monotonic() - t0 >= BLIP_MIN_WINDOW_S
                                       and time.monotonic() - t2 >= BLIP_AFTER_SECOND_S), max_s=60)
            blipper.stop()
            report["window1_s"] = round(time.monotonic() - t0, 1)

            # Window 2: once the second request's job runs (if it is still open), blip again.
            body = None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                body = _get_status(c, obs, rid2, "GET status (between)")
                if body is not None and body["status"] in ACTIVE + TERMINAL:
                    break
                time.sleep(0.1)
            if body is not None and body["status"] in ACTIVE:
                t1 = time.monotonic()
                blipper.start()
                _poll_while(c, obs, [rid1, rid2], seen, "during blip",
                            until=lambda: time.monotonic() - t1 >= BLIP_ACTIVE_WINDOW_S, max_s=60)
                blipper.stop()
                report["window2_s"] = round(time.monotonic() - t1, 1)
        report.update(blip_rounds=blipper.rounds, backends_killed=blipper.killed, blip_errors=blipper.errors[:5],
                      statuses_during_blips={rid: _distinct(seen, rid) for rid in (rid1, rid2)})
        assert blipper.rounds > 0 and blipper.killed > 0, f"the blips never killed a backend: {report}"
        assert not blipper.errors, blipper.errors
        _check_nothing_lost_no_fork(stack, obs, {rid1: ("toy-02", "blip-first"), rid2: ("toy-03", "blip-second")},
                                    report, tmp_path)
    finally:
        blipper.stop()
        cleanup()


@pytest.mark.timeout(1200)
def test_db_outage_mid_job_loses_nothing_and_never_forks(tmp_path: Path) -> None:
    """The DB refuses every connection for OUTAGE_S while a job runs; a request is retried through it."""
    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=REDIS_DB, api_workers=1)
    db_name = stack.db_url.rsplit("/", 1)[1]
    obs, outage = Observer(), Blipper(db_name, interval_s=0.5, refuse=True)
    seen: list[tuple[str, str]] = []
    report: dict[str, Any] = {"db": db_name, "mode": f"ALLOW_CONNECTIONS false + terminate for {OUTAGE_S}s"}
    try:
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
            _baseline(c, stack, ("toy-04", "toy-07"))
            first = c.post("/v1/erasure-requests", json={"subject_id": "toy-04", "reason": "db blip test"},
                           headers={"Idempotency-Key": "outage-first"})
            assert first.status_code == 202, first.text + _logs(stack)
            rid1 = first.json()["id"]
            # The outage starts as soon as the job is seen running.
            _poll_while(c, obs, [rid1], seen, "before outage",
                        until=lambda: any(st in ACTIVE + TERMINAL for _, st in seen), max_s=180)
            assert seen and seen[-1][1] in ACTIVE, f"the job was never seen running: {seen}" + _logs(stack)
            report["status_at_outage"] = seen[-1][1]
            t0 = time.monotonic()
            outage.start()
            # A second request during the outage, retried with its key until it is accepted.
            rid2 = None
            while time.monotonic() - t0 < OUTAGE_S:
                if rid2 is None and (r := _try_submit(c, obs, "toy-07", "outage-second",
                                                      "POST erasure (during outage)")) is not None:
                    assert r.status_code == 202, r.text
                    rid2 = r.json()["id"]
                    report["second_accepted_during_outage_after_s"] = round(time.monotonic() - t0, 1)
                _poll_while(c, obs, [rid1], seen, "during outage", until=lambda: True, max_s=1)
                time.sleep(0.2)
            outage.stop()
            report["outage_s"] = round(time.monotonic() - t0, 1)
            if rid2 is None:
                second = _submit(c, obs, "toy-07", "outage-second", "POST erasure (after outage)", timeout=120)
                assert second.status_code == 202, second.text + _logs(stack)
                rid2 = second.json()["id"]
        report.update(terminate_rounds=outage.rounds, backends_killed=outage.killed, blip_errors=outage.errors[:5],
                      statuses_seen={rid: _distinct(seen, rid) for rid in (rid1, rid2)})
        assert not outage.errors, outage.errors
        # The outage really refused the API: a POST during it can only have failed.
        refused = obs.seen.get("POST erasure (during outage)", Counter())
        assert sum(n for k, n in refused.items() if k != "202") > 0, (refused, report)
        _check_nothing_lost_no_fork(stack, obs, {rid1: ("toy-04", "outage-first"), rid2: ("toy-07", "outage-second")},
                                    report, tmp_path)
    finally:
        outage.stop()
        cleanup()


def _probe(dsn: str, rid: str) -> tuple[int, str] | None:
    """(job_resumed events so far, the request's status), read from the stack's DB directly (a fresh
    connection: an outage kills every backend of the DB); None while the DB refuses."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            (resumed,) = conn.execute("SELECT count(*) FROM auditevent WHERE type = 'job_resumed'").fetchone()
            (status,) = conn.execute("SELECT status FROM erasurerequest WHERE id = %s", (rid,)).fetchone()
            return int(resumed), str(status)
    except psycopg.Error:
        return None


@pytest.mark.timeout(1200)
def test_repeated_db_outages_mid_job_do_not_fail_the_erasure(tmp_path: Path) -> None:
    """MAX_JOB_ATTEMPTS outages, each while the same job runs: the job must be resumed each time and complete.

    Forced, not timed: each outage starts while the worker is frozen (SIGSTOP) right after the job
    (re)started, so it always lands mid-job (the job restarts from collection after each resume and
    needs seconds to publish; the freeze comes within ~50 ms of the resume)."""
    from tests.integration.procs import frozen, worker_pids

    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=REDIS_DB, api_workers=1)
    db_name = stack.db_url.rsplit("/", 1)[1]
    dsn = stack.db_url.replace("+psycopg", "")
    obs, outage = Observer(), Blipper(db_name, interval_s=0.5, refuse=True)
    report: dict[str, Any] = {"db": db_name, "mode": f"{MAX_JOB_ATTEMPTS} x ALLOW_CONNECTIONS false for {OUTAGE_S}s"}
    landed: list[str] = []  # the request's status as each outage began
    try:
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
            _baseline(c, stack, ("toy-08",))
            r = c.post("/v1/erasure-requests", json={"subject_id": "toy-08", "reason": "db blip test"},
                       headers={"Idempotency-Key": "outages-1"})
            assert r.status_code == 202, r.text + _logs(stack)
            rid = r.json()["id"]
        for i in range(MAX_JOB_ATTEMPTS):
            # Wait for the job to start (i = 0) or to be resumed for the i-th time.
            probe, deadline = None, time.monotonic() + 180
            while time.monotonic() < deadline:
                probe = _probe(dsn, rid)
                if probe is not None and (probe[1] in TERMINAL or (probe[1] in ACTIVE and probe[0] >= i)):
                    break
                time.sleep(0.05)
            with frozen(worker_pids(stack.proc.pid)):
                probe = _probe(dsn, rid)
                assert probe is not None and probe[1] in ACTIVE, (
                    f"outage {i + 1}: the job was not running when the worker was frozen: {probe}; {report}")
                landed.append(probe[1])
                outage.start()  # the job is running: its next DB call fails, its worker gives the job up
            time.sleep(OUTAGE_S)
            outage.stop()
        report.update(outages_landed_while=landed)
        done = _wait_terminal(stack, obs, [rid], COMPLETE_TIMEOUT_S)[rid]
        report["final"] = {"status": done["status"], "error": done["error"]}
        report["resumes_seen"] = (_probe(dsn, rid) or (None,))[0]
        print("\nDB outages report:", json.dumps(report, indent=2, default=str))
        assert len(landed) == MAX_JOB_ATTEMPTS, report
        assert done["status"] != "failed" or done["error"], done  # at worst it fails visibly
        assert done["status"] == "completed", (
            f"{MAX_JOB_ATTEMPTS} DB outages failed the erasure for good: {done['error']!r}; {report}" + _logs(stack))
        assert report["resumes_seen"] >= MAX_JOB_ATTEMPTS, report  # resumed after each outage, never given up
    finally:
        outage.stop()
        cleanup()


def _http_exchange(sock: Any, request: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """Send one HTTP/1.1 request on a kept-alive socket; (status, headers, body), or None if closed unanswered."""
    try:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
        return int(lines[0].split()[1]), headers, body
    except (ConnectionError, OSError):
        return None


@pytest.mark.timeout(600)
def test_db_outage_answers_every_request_on_a_keep_alive_connection(tmp_path: Path) -> None:
    """While the DB is down, each request on one connection gets a problem+json 5xx; none goes unanswered."""
    import socket
    from urllib.parse import urlsplit

    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=REDIS_DB, api_workers=1)
    outage = Blipper(stack.db_url.rsplit("/", 1)[1], interval_s=0.5, refuse=True)
    url = urlsplit(stack.url)
    request = (f"GET /v1/erasure-requests/no-such-request HTTP/1.1\r\nHost: {url.netloc}\r\n"
               f"Authorization: {stack.headers['Authorization']}\r\n\r\n").encode()
    try:
        with socket.create_connection((url.hostname, url.port), timeout=HTTP_TIMEOUT_S) as sock:
            first = _http_exchange(sock, request)
            assert first is not None and first[0] == 404, first  # the DB is up: a plain problem+json 404
        outage.start()
        answers = []
        with socket.create_connection((url.hostname, url.port), timeout=HTTP_TIMEOUT_S) as sock:
            for _ in range(3):
                answers.append(_http_exchange(sock, request))
        outage.stop()
        summary = [a and (a[0], a[1].get("content-type"), a[2][:200]) for a in answers]
        print("\nanswers during the outage, one connection:", summary)
        assert answers[0] is not None and answers[0][0] >= 500, summary
        for a in answers:
            assert a is not None, f"a request on a kept-alive connection went unanswered: {summary}"
            assert a[0] == 503 and a[1]["content-type"].startswith("application/problem+json"), summary
            assert json.loads(a[2])["code"] == "database_unavailable" and int(a[1]["retry-after"]) > 0, summary
    finally:
        outage.stop()
        cleanup()


def test_request_session_teardown_survives_a_connection_killed_after_the_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The request-scoped session dependency must not fail its teardown over a connection already gone."""
    from sqlmodel import Session

    from app.core import db

    url, drop = create_pg_database("lethe_blip_close")
    engine = db.make_engine(url)
    monkeypatch.setattr(db, "new_session", lambda: Session(engine))
    try:
        dependency = db.get_session()  # what FastAPI drives for SessionDep
        session = next(dependency)
        pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()  # the handler's work
        with _admin() as conn:  # the blip lands after the handler, before the teardown
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            deadline = time.monotonic() + 10
            while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
                assert time.monotonic() < deadline, "backend was not terminated"
                time.sleep(0.05)
        with pytest.raises(StopIteration):
            next(dependency)  # the teardown: closing a session whose connection is gone must not raise
    finally:
        engine.dispose()
        drop()
