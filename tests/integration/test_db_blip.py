"""Nothing acknowledged is ever lost: PostgreSQL blips end with every request completed, never dropped.

A Lethe stack (API + Celery worker + beat) runs on a private PostgreSQL database. While an erasure
job runs, the test repeatedly terminates every backend of that database (``pg_terminate_backend``
from the admin DB), so the API's, the worker's and the housekeeping's connections die mid-transaction.

Afterwards every acknowledged request must have completed (the reconciler and the job lease resume a
job whose connection was killed), exactly once, and the version history must not fork: one job at a
time per model, each ``ModelVersion``'s parent is the previous version. While the DB is being killed
the API may refuse a request, but only with a problem+json 5xx, never a hang; a client that retries
with the same ``Idempotency-Key`` gets one request.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Stack, start_stack

pytestmark = pytest.mark.integration

ADMIN_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
PREDICT_BODY = {"inputs": [{"x": [0.5] * 16}]}
ACTIVE = ("running", "verifying", "deploying")
TERMINAL = ("completed", "failed", "cancelled", "rejected", "no_data")
BLIP_INTERVAL_S = 0.5
BLIP_MIN_WINDOW_S = 6.0  # the first window, from right after the first submit
BLIP_ACTIVE_WINDOW_S = 3.0  # a second window while a job runs, if the first saw none running
COMPLETE_TIMEOUT_S = 300
HTTP_TIMEOUT_S = 30  # a request that takes longer than this during a blip is a hang


class Blipper:
    """Terminates every backend of one database every ``interval_s`` while started."""

    def __init__(self, db_name: str, interval_s: float = BLIP_INTERVAL_S) -> None:
        self.db_name, self.interval_s = db_name, interval_s
        self.rounds = 0
        self.killed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="db-blipper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(ADMIN_DB, autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    rows = conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,)).fetchall()
                    self.rounds += 1
                    self.killed += sum(1 for (ok,) in rows if ok)
                except Exception as exc:  # noqa: BLE001 - recorded, the test asserts on it
                    self.errors.append(repr(exc))
                self._stop.wait(self.interval_s)


class Observer:
    """Every HTTP outcome seen during the test, by label: status codes, exceptions, bad 5xx bodies."""

    def __init__(self) -> None:
        self.seen: dict[str, Counter] = {}
        self.bad_5xx: list[str] = []  # 5xx answers that are not problem+json
        self.hangs: list[str] = []

    def record(self, label: str, outcome: httpx.Response | Exception) -> None:
        counter = self.seen.setdefault(label, Counter())
        if isinstance(outcome, httpx.TimeoutException):
            counter["timeout"] += 1
            self.hangs.append(f"{label}: {outcome!r}")
        elif isinstance(outcome, Exception):
            counter[type(outcome).__name__] += 1
        else:
            counter[str(outcome.status_code)] += 1
            if outcome.status_code >= 500 and not _is_problem(outcome):
                self.bad_5xx.append(f"{label}: {outcome.status_code} {outcome.headers.get('content-type')} "
                                    f"{outcome.text[:300]!r}")

    def summary(self) -> dict[str, dict[str, int]]:
        return {label: dict(c) for label, c in self.seen.items()}


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


def _submit(c: httpx.Client, obs: Observer, subject: str, key: str, label: str,
            deadline: float) -> httpx.Response:
    """POST until a 2xx, retrying 5xx and connection errors with the same Idempotency-Key."""
    last: httpx.Response | Exception | None = None
    while time.monotonic() < deadline:
        try:
            r = c.post("/v1/erasure-requests", json={"subject_id": subject, "reason": "db blip test"},
                       headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            obs.record(label, exc)
            last = exc
            time.sleep(0.2)
            continue
        obs.record(label, r)
        if r.status_code < 500:
            return r
        last = r
        time.sleep(0.2)
    raise AssertionError(f"{label}: never accepted; last outcome {last!r}")


def _wait_terminal(stack: Stack, obs: Observer, rids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    last: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
        while time.monotonic() < deadline:
            for rid in rids:
                body = _get_status(c, obs, rid, "GET status (after)")
                if body is not None:
                    last[rid] = body
            if len(last) == len(rids) and all(b["status"] in TERMINAL for b in last.values()):
                return last
            time.sleep(0.5)
    raise AssertionError(
        f"requests did not end in {timeout:.0f}s (stuck, silently dropped?): "
        f"{ {rid: (b['status'], b['stage'], b['models'], b['error']) for rid, b in last.items()} }" + _logs(stack))


@pytest.mark.timeout(1200)
def test_db_blips_mid_job_lose_nothing_and_never_fork(tmp_path: Path) -> None:
    import psycopg  # noqa: F401  (skip cleanly below if the stack cannot start)

    stack, cleanup = start_stack(tmp_path, "postgresql", redis_db=15, api_workers=1)
    db_name = stack.db_url.rsplit("/", 1)[1]
    obs = Observer()
    blipper = Blipper(db_name)
    statuses_during_blip: list[tuple[str, str]] = []
    report: dict[str, Any] = {"db": db_name}
    try:
        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
            before = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
            assert before.status_code == 200 and before.json()["model_version"] == 1, before.text + _logs(stack)
            assert c.get("/v1/subjects/toy-02").json()["samples"]["toy"]["train"] > 0
            assert c.get("/v1/subjects/toy-03").json()["samples"]["toy"]["train"] > 0

            first = c.post("/v1/erasure-requests", json={"subject_id": "toy-02", "reason": "db blip test"},
                           headers={"Idempotency-Key": "blip-first"})
            assert first.status_code == 202, first.text + _logs(stack)
            rid1 = first.json()["id"]

            # Window 1: right after the submit, for BLIP_MIN_WINDOW_S; a second request arrives inside it.
            t0 = time.monotonic()
            blipper.start()
            time.sleep(BLIP_INTERVAL_S)  # let the first kill land before the second POST
            second = _submit(c, obs, "toy-03", "blip-second", "POST erasure (during blip)",
                             deadline=time.monotonic() + 120)
            assert second.status_code == 202, second.text + _logs(stack)
            rid2 = second.json()["id"]
            saw_active = False
            while time.monotonic() - t0 < BLIP_MIN_WINDOW_S:
                for rid in (rid1, rid2):
                    body = _get_status(c, obs, rid, "GET status (during blip)")
                    if body is not None:
                        statuses_during_blip.append((rid, body["status"]))
                        saw_active |= body["status"] in ACTIVE
                try:
                    obs.record("predict (during blip)", c.post("/v1/models/toy/predict", json=PREDICT_BODY))
                except httpx.HTTPError as exc:
                    obs.record("predict (during blip)", exc)
                time.sleep(0.2)
            blipper.stop()
            report["window1_s"] = round(time.monotonic() - t0, 1)

            # Window 2: if no job was seen running in window 1, blip again once one runs.
            if not saw_active:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline and not saw_active:
                    bodies = [_get_status(c, obs, rid, "GET status (between)") for rid in (rid1, rid2)]
                    if all(b is not None and b["status"] in TERMINAL for b in bodies):
                        break
                    saw_active = any(b is not None and b["status"] in ACTIVE for b in bodies)
                    time.sleep(0.2)
                if saw_active:
                    t1 = time.monotonic()
                    blipper.start()
                    while time.monotonic() - t1 < BLIP_ACTIVE_WINDOW_S:
                        for rid in (rid1, rid2):
                            body = _get_status(c, obs, rid, "GET status (during blip)")
                            if body is not None:
                                statuses_during_blip.append((rid, body["status"]))
                        time.sleep(0.2)
                    blipper.stop()
                    report["window2_s"] = round(time.monotonic() - t1, 1)
        report.update(blip_rounds=blipper.rounds, backends_killed=blipper.killed, blip_errors=blipper.errors[:5],
                      statuses_during_blip=sorted(set(statuses_during_blip)), saw_active=saw_active)
        assert blipper.rounds > 0 and blipper.killed > 0, f"the blips never killed a backend: {report}"
        assert not blipper.errors, blipper.errors

        done = _wait_terminal(stack, obs, [rid1, rid2], COMPLETE_TIMEOUT_S)
        report["final"] = {rid: {"status": b["status"], "error": b["error"]} for rid, b in done.items()}
        report["http"] = obs.summary()

        with httpx.Client(base_url=stack.url, headers=stack.headers, timeout=HTTP_TIMEOUT_S) as c:
            for kind in ("job_started", "job_resumed", "job_fenced", "erasure_failed"):
                report[kind] = len(c.get("/v1/audit/events", params={"type": kind, "limit": 1000}).json()["items"])
            (tmp_path / "blip_report.json").write_text(json.dumps(report, indent=2, default=str))
            print("\nDB blip report:", json.dumps(report, indent=2, default=str))

            # During the blips: refusals are problem+json 5xx, never a hang or a bare 500.
            assert not obs.hangs, f"the API hung during a DB blip: {obs.hangs}\n{report}" + _logs(stack)
            assert not obs.bad_5xx, f"5xx without a problem+json body: {obs.bad_5xx}" + _logs(stack)

            # Every acknowledged request completed; a failure at least carries its error.
            for rid, body in done.items():
                if body["status"] == "failed":
                    assert body["error"], f"{rid} failed without an error: {body}" + _logs(stack)
                assert body["status"] == "completed", (
                    f"{rid} ended {body['status']!r} (error: {body['error']!r}) after DB blips; report: {report}"
                    + _logs(stack))
                assert body["percent"] == 100 and body["models"] == [
                    {"model": "toy", "status": "done", "job_id": body["models"][0]["job_id"]}], body

            # Exactly once: the retried POST made one request, and replaying its key returns it.
            replay = c.post("/v1/erasure-requests", json={"subject_id": "toy-03", "reason": "db blip test"},
                            headers={"Idempotency-Key": "blip-second"})
            assert replay.status_code == 202 and replay.json()["id"] == rid2, replay.text
            assert replay.headers.get("idempotent-replayed") == "true"
            for subject, rid in (("toy-02", rid1), ("toy-03", rid2)):
                items = c.get("/v1/erasure-requests", params={"subject_id": subject}).json()["items"]
                assert [i["id"] for i in items] == [rid], (subject, items)
                held = c.get(f"/v1/subjects/{subject}").json()
                assert held["samples"] == {} and held["suppressed"] is True, held
            for rid in (rid1, rid2):
                events = [e["type"] for e in c.get("/v1/audit/events", params={"request_id": rid}).json()["items"]]
                assert events.count("erasure_requested") == 1, (rid, events)
                assert events.count("erasure_completed") == 1, (rid, events)

            # No fork: a linear history; each version's parent is the previous one.
            model = c.get("/v1/models/toy").json()
            history = [(v["version"], v["parent"], v["method"], v["state"]) for v in model["versions"]]
            numbers = [v["version"] for v in model["versions"]]
            assert numbers == list(range(1, len(numbers) + 1)), history
            assert all(v["parent"] == prev for prev, v in zip(numbers, model["versions"][1:])), history
            serving = model["serving_version"]
            assert serving == numbers[-1] and 2 <= serving <= 3, (serving, history)
            after = {rid: done[rid]["result"]["models"]["toy"] for rid in (rid1, rid2)}
            for res in after.values():
                assert res["version_after"] == res["version_before"] + 1, after
            # One job at a time: jobs chain (the second starts from the first's output) or are one batch.
            assert max(res["version_after"] for res in after.values()) == serving, (after, history)
            assert len({res["job_id"] for res in after.values()}) == serving - 1, (after, history)
            assert len(history) == serving, history

            # Completion means the API serves the new version; the audit chain still verifies.
            deadline = time.monotonic() + 60
            while True:
                p = c.post("/v1/models/toy/predict", json=PREDICT_BODY)
                if p.status_code == 200 or time.monotonic() > deadline:
                    break
                assert p.status_code == 503 and _is_problem(p), p.text
                time.sleep(0.5)
            assert p.status_code == 200 and p.json()["model_version"] == serving, p.text + _logs(stack)
            assert p.headers["x-model-version"] == str(serving)
            verify = c.get("/v1/audit/verify").json()
            assert verify["ok"] is True, verify
    finally:
        blipper.stop()
        cleanup()
