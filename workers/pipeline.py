"""One unlearning job of one model: collect -> delete data -> unlearn -> verify -> publish
-> wait for every live replica -> complete (DESIGN.md section 1).

Plain functions over a DB session factory, so tests call them directly and the Celery
task stays a thin wrapper. The DB is the source of truth: a job row records its stage,
so a re-delivered message resumes (from the current serving version) instead of starting
over, and a job re-delivered more than ``max_job_attempts`` times fails visibly.

One job at a time per model: a lease on the ``model`` row (``workers/lease.py``), renewed
while the job runs, so versions never fork and a dead worker's lock expires.

This module only orchestrates over IDs: job state lives in ``app/services/models/jobs.py``, request
status in ``app/services/requests/lifecycle.py``, the forget problem and its unlearning in
``workers/problem.py``. A job that fails leaves its requests owed (retried with backoff).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from app.core import testhook
from app.core.config import Settings
from app.core.errors import Unavailable, database_unavailable
from app.core.logging import log_context
from app.data import physical
from app.db.models import UnlearningJob, utcnow
from app.services import audit
from app.services.integrations import source_erasure
from app.services.models import jobs
from app.services.storage import deletions
from app.services.models import catalog as model_service
from app.services.models import schedule as schedule_service
from app.services.models.jobs import ACTOR, STAGE_SPAN
from workers.context import Worker
from workers.interim import run_interim
from workers.lease import LeaseKeeper, acquire_lock, holds_fence, release_lock
from workers.problem import collect, unlearn_and_publish

log = logging.getLogger("lethe.pipeline")


# ---------------------------------------------------------------- entry point


def queued_count(w: Worker, model_name: str) -> int:
    """Targets a job could take now (queued and past their retry backoff)."""
    with w.session() as s:
        return jobs.due_count(s, model_name)


def arm_wake(w: Worker, model_name: str) -> float | None:
    """After a drain that held the lease: ask to be woken when a scheduled model's exact job is due
    (``schedule_service.wake_in_s``; half a second late rather than early). Returns the seconds."""
    with w.session() as s:
        wake = schedule_service.wake_in_s(s, model_name, w.settings)
    if wake is not None:
        w.wake(model_name, wake + 0.5)
    return wake


def drain(w: Worker, model_name: str) -> list[str]:
    """Run jobs for ``model_name`` until nothing is due. Returns the job ids run.

    Returns at once when another live worker holds the model's lease: that worker's
    drain loop picks up what is queued, and re-checks after releasing the lease.
    """
    done: list[str] = []
    with log_context(model=model_name):  # every record of the drain names the model (JSON logs)
        while True:
            if not acquire_lock(w, model_name):
                return done
            try:
                with LeaseKeeper(w, model_name):
                    _run_jobs(w, model_name, done)
            finally:
                release_lock(w, model_name)
            if queued_count(w, model_name) == 0:  # a request may have arrived while we held the lease
                # Only a drain that held the lease arms the wake: one turned away would otherwise
                # poll the lease holder's model every half second while its exact job runs.
                arm_wake(w, model_name)
                return done


def _run_jobs(w: Worker, model_name: str, done: list[str]) -> None:
    """Run jobs while this worker holds the lease. A database outage mid-job does not end the
    drain: wait for the database, then resume the same job (it is not counted as a delivery)."""
    while True:
        job_id: str | None = None
        try:
            # Re-check the lease before each job: a worker that stalled past it and lost it
            # to another must not pick up (resume) the job that worker now runs.
            if not acquire_lock(w, model_name) or (job_id := next_job(w, model_name)) is None:
                return
            run_job(w, job_id)
            done.append(job_id)
        except DBAPIError as exc:
            if database_unavailable(exc) is None:
                raise
            log.warning("model %s: database error (%s); waiting for the database", model_name,
                        type(exc.orig).__name__, extra={"job_id": job_id})
            was_down = wait_for_database(w)
            # An outage is a lost connection or a database that did not answer. Anything else
            # (an OperationalError that repeats, e.g. a schema mismatch) counts as a delivery,
            # so a job that keeps failing still ends visibly after max_job_attempts.
            if job_id is not None and (exc.connection_invalidated or was_down):
                w.db_interrupted.add(job_id)


def wait_for_database(w: Worker) -> bool:
    """Poll the database with backoff until it answers; raise after ``db_outage_wait_s``.
    Returns whether it was down (at least one probe failed)."""
    deadline, delay, was_down = time.monotonic() + w.settings.db_outage_wait_s, 0.5, False
    while True:
        try:
            with w.session() as s:
                s.exec(text("SELECT 1"))
            return was_down
        except DBAPIError:
            if time.monotonic() > deadline:
                raise
            was_down = True
            w.sleep(delay)
            delay = min(delay * 2, 5.0)


def next_job(w: Worker, model_name: str) -> str | None:
    """Resume an orphaned job of this model, or gather due targets into a new one."""
    while (outcome := _resume_orphan(w, model_name)) == "gave_up":
        pass  # that orphan failed (its requests stay owed); look for another
    if outcome is not None:
        return outcome
    with w.session() as s:
        # A request for a subject already owed the exact job joins it without an interim of its own.
        if schedule_service.join_owed(s, model_name, w.settings):
            s.commit()
        # What the model's schedule runs next (issue 16): today's job, a scheduled model's
        # interim step, or its exact job for every owed subject; None: nothing is due now.
        phase = schedule_service.next_phase(s, model_name, w.settings)
        if phase is None:
            return None
        first = jobs.oldest_due_queued_at(s, model_name)
    wait = w.settings.batch_window_s - (utcnow() - first).total_seconds() if first is not None else 0
    if wait > 0:  # let more requests arrive: 100 requests in a minute become one job
        w.sleep(wait)
    with w.session() as s:
        model = model_service.get_model(s, model_name)
        deferred = schedule_service.schedule_of(model).deferred
        why = schedule_service.decision(s, model, w.settings).to_dict() if deferred and phase == "exact" else None
        targets = schedule_service.take(s, model_name, phase, limit=w.settings.batch_max,
                                        lock=s.get_bind().dialect.name == "postgresql")
        if not targets:
            return None
        job = jobs.open_job(s, model_name=model_name, targets=targets, worker=w.owner, device=str(w.device),
                            phase="interim" if phase == "interim" else "exact",
                            policy=schedule_service.exact_method(model) if deferred and phase == "exact" else None)
        if deferred and phase == "exact":
            job.timings = {**job.timings, "schedule": why}
            schedule_service.clear_operator_request(s, model)
        s.commit()
        return job.id


def _resume_orphan(w: Worker, model_name: str) -> str | None:
    """Id of a job left running by a dead worker (we hold the lease), "gave_up", or None."""
    with w.session() as s:
        orphan = jobs.orphaned_job(s, model_name)
        if orphan is None:
            return None
        cause = "database_unavailable" if orphan.id in w.db_interrupted else "redelivered"
        w.db_interrupted.discard(orphan.id)
        if cause == "redelivered":
            orphan.deliveries += 1
        if orphan.deliveries > w.settings.max_job_attempts:
            jobs.fail_job(s, orphan, f"job was interrupted {orphan.deliveries - 1} times; giving up",
                          w.settings)
            s.commit()
            return "gave_up"
        audit.append(s, type="job_resumed", actor=ACTOR,
                     payload={"job_id": orphan.id, "model": model_name, "delivery": orphan.deliveries,
                              "cause": cause})
        s.add(orphan)
        s.commit()
        return orphan.id


# ---------------------------------------------------------------- one job


def set_progress(w: Worker, job_id: str, stage: str, fraction: float = 0.0) -> None:
    with w.session() as s:
        jobs.set_stage(s, jobs.get_job(s, job_id=job_id), stage, fraction)
        s.commit()


def throttled_progress(w: Worker, job_id: str, every_s: float = 0.5) -> Callable[[str, float], None]:
    last = {"t": 0.0, "stage": ""}

    def progress(stage: str, fraction: float) -> None:
        # The engine reports "unlearn:<method>" and "verify:<method>".
        stage = {"unlearn": "unlearning", "verify": "verifying"}.get(stage.split(":")[0], stage)
        now = time.monotonic()
        if stage != last["stage"] or now - last["t"] >= every_s:
            last.update(t=now, stage=stage)
            set_progress(w, job_id, stage if stage in STAGE_SPAN else "unlearning", fraction)

    return progress


def run_job(w: Worker, job_id: str) -> None:
    with log_context(job_id=job_id):  # every record of the job, methods' and gates' included, names it
        _run_job(w, job_id)


class InterimsAlongside:
    """While a scheduled model's exact job trains (minutes to hours), requests that arrive get their
    interim at once instead of after it: on movielens-30s the p95 time to interim was 59 s, the exact
    job's length (issue 16). Same lease (the worker's ``owner``); ``stop`` waits for the interim under
    way, so the two never publish at once; the exact job then publishes on top of those interims and
    clears their subjects' own parameters as well (``problem.unlearn_and_publish``), without being
    ``free_of`` them.

    The interims run in **a process of their own** (``workers/alongside.py``), started when the first
    one is due and kept until ``stop``, when ``w.alongside_process`` is set (the Celery worker sets
    it). In a thread beside the training loop they held the GIL the loop needs between its torch ops
    (the convoy effect): a small training loop ran at 1 % of its speed beside a busy Python thread
    (200 -> 2 steps/s, ``bench/gil.py``), and the compressed run's exact retrains took 32 and 39 s
    with 3 and 6 interims beside them against 24-25 s without. A thread (the poll that decides
    whether to start the process) stays: it only queries, once every ``POLL_S``. Without
    ``alongside_process`` (a worker whose ``publish`` another process cannot reproduce, as in unit
    tests) they run in the thread, as before."""

    POLL_S = 0.5

    def __init__(self, w: Worker, model_name: str) -> None:
        self.w, self.model_name, self._stop = w, model_name, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lethe-interims")
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> InterimsAlongside:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No new interim from now on; returns once the one under way (if any) has ended."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # end of input: finish the job under way, open no other
            self._proc.wait()
            self._proc = None

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            job_id = None
            try:
                if not self.w.alongside_process:
                    if (job_id := open_interim(self.w, self.model_name)) is not None:
                        run_job(self.w, job_id)
                elif self._proc is None or self._proc.poll() is not None:
                    if self._proc is not None:
                        log.warning("the interim process beside the exact job of %s exited (%s); its open job is "
                                    "resumed after the exact job", self.model_name, self._proc.returncode)
                        self._proc = None
                    if self._due():
                        self._proc = spawn_alongside(self.w, self.model_name)
            except Exception:  # noqa: BLE001 - the job stays open: the drain resumes it after the exact job
                log.warning("interim job alongside the exact job of %s failed", self.model_name, exc_info=True,
                            extra={"job_id": job_id})

    def _due(self) -> bool:
        with self.w.session() as s:
            return s.exec(schedule_service.interim_query(self.model_name, utcnow())).first() is not None


def spawn_alongside(w: Worker, model_name: str) -> subprocess.Popen:
    """``python -m workers.alongside``, told on its first stdin line what it needs (the worker's
    settings, secrets included -- never on its command line --, database, device, owner, where to
    publish); it runs the model's interim jobs until its stdin closes."""
    from pydantic import SecretStr

    settings = w.settings.model_dump(mode="json")
    for name, value in w.settings:
        if isinstance(value, SecretStr):
            settings[name] = value.get_secret_value()
    boot = {"model": model_name, "owner": w.owner, "device": str(w.device), "publish_url": w.publish_url,
            "db_url": w.engine.url.render_as_string(hide_password=False) if w.engine is not None else None,
            "settings": settings}
    root = str(Path(__file__).resolve().parents[1])  # workers/ importable whatever the cwd (relative paths keep it)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "workers.alongside"], stdin=subprocess.PIPE, text=True, env=env)
    proc.stdin.write(json.dumps(boot) + "\n")
    proc.stdin.flush()
    return proc


def open_interim(w: Worker, model_name: str) -> str | None:
    """Open an interim job for the model's due interim targets (under the lease ``w`` holds), or
    None; a request for a subject already owed the exact job joins it instead."""
    with w.session() as s:
        if schedule_service.join_owed(s, model_name, w.settings):
            s.commit()
        targets = schedule_service.take(s, model_name, "interim", limit=w.settings.batch_max,
                                        lock=s.get_bind().dialect.name == "postgresql")
        if not targets:
            return None
        job = jobs.open_job(s, model_name=model_name, targets=targets, worker=w.owner, device=str(w.device),
                            phase="interim")
        s.commit()
        return job.id


def _run_job(w: Worker, job_id: str) -> None:
    with w.session() as s:
        job = jobs.get_job(s, job_id=job_id)
        serving = model_service.serving_version(s, job.model_name)
        deferred = schedule_service.schedule_of(model_service.get_model(s, job.model_name)).deferred
        job.lease_until = utcnow()
        if set(job.request_ids) <= set(serving.free_of) and job.version_after is None and job.phase != "interim":
            # The serving version is already free of the batch (an earlier attempt published
            # it, then failed to deploy in time): skip straight to deploy.
            job.version_before = job.version_before or serving.parent
            job.version_after = serving.number
            job.status = "deploying"
        s.add(job)
        s.commit()
        published, phase = job.version_after is not None, job.phase
    if phase == "interim":
        if not published and not run_interim(w, job_id, progress=throttled_progress(w, job_id)):
            return
        deploy_and_complete(w, job_id)
        return
    if not published:
        set_progress(w, job_id, "deleting_data")
        try:
            testhook.step("collect")
            problem = collect(w, job_id)
        except Unavailable as exc:  # e.g. the organisation's Delta table cannot be read: retried with backoff
            with w.session() as s:
                jobs.fail_job(s, jobs.get_job(s, job_id=job_id), exc.detail, w.settings)
                s.commit()
            return
        testhook.step("unlearn")
        # (its thread needs connections of its own: a Worker on the app's rebindable session factory,
        # as unit tests run it on one rolled-back connection, goes without)
        alongside = (InterimsAlongside(w, problem.model_name) if deferred and w.engine is not None
                     else contextlib.nullcontext())
        with alongside:
            if not unlearn_and_publish(w, job_id, problem, progress=throttled_progress(w, job_id),
                                       settle=getattr(alongside, "stop", None)):
                return
    deploy_and_complete(w, job_id)


def _complete_exact(s: Session, job: UnlearningJob, settings: Settings, *, deploy_s: float) -> None:
    jobs.complete_job(s, job, settings, deploy_s=deploy_s)
    schedule_service.observe_job(s, job)  # the scheduler's expected exact cost (issue 16)


def deploy_and_complete(w: Worker, job_id: str) -> None:
    set_progress(w, job_id, "deploying")
    with w.session() as s:
        job = jobs.get_job(s, job_id=job_id)
        target_version, name, phase = job.version_after, job.model_name, job.phase
    complete = schedule_service.complete_interim if phase == "interim" else _complete_exact
    deadline = time.monotonic() + w.settings.deploy_timeout_s
    t0 = time.monotonic()
    while True:
        with w.session() as s:
            stale = [r.replica_id for r in model_service.live_replicas(s, name=name, ttl_s=w.settings.replica_ttl_s)
                     if r.version is None or r.version < target_version]
        if not stale:
            break
        if time.monotonic() > deadline:
            with w.session() as s:
                jobs.fail_job(s, jobs.get_job(s, job_id=job_id),
                              f"{len(stale)} live replica(s) did not load version {target_version} in time",
                              w.settings)
                s.commit()
            return
        w.sleep(0.2)
    if phase != "interim" and not purge_samples(w, job_id, target_version):
        return
    with w.session() as s:
        job = jobs.get_job(s, job_id=job_id)
        if holds_fence(s, w, job, serving=target_version):
            complete(s, job, w.settings, deploy_s=time.monotonic() - t0)
        testhook.step("complete")
        s.commit()
    testhook.step("drain_deletions")
    drain_deletions(w)
    source_erasure.after_job(w.session, secret=w.settings.subject_key_secret)  # the table changes after commit


def purge_samples(w: Worker, job_id: str, target_version: int) -> bool:
    """The batch's rows hard-deleted and committed, the files that held them deleted, and the
    database compacted (SQLite: truncating WAL checkpoint; PostgreSQL: VACUUM), all *before* the
    commit that turns the requests ``completed`` (issue 18, item 5). False when fenced off."""
    with w.session() as s:
        job = jobs.get_job(s, job_id=job_id)
        fenced = not holds_fence(s, w, job, serving=target_version)
        if not fenced:
            jobs.purge_samples(s, job, w.settings)
        s.commit()
    if fenced:
        return False
    drain_deletions(w)
    if w.engine is not None:  # the deleted rows leave the database files too (app/data/physical.py)
        physical.compact(w.engine)
    return True


def drain_deletions(w: Worker) -> None:
    """Delete the files the committed completion made obsolete; what a failure leaves on the
    to-delete list the reconciler drains (``app/services/storage/deletions.py``)."""
    try:
        deletions.drain(w.session)
    except Exception:  # noqa: BLE001 - the job is complete; the files are the reconciler's now
        log.warning("draining the to-delete list failed; the reconciler will retry", exc_info=True)
