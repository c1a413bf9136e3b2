"""One unlearning job of one model: collect -> delete data -> unlearn -> verify -> publish
-> wait for every live replica -> complete (DESIGN.md section 1).

Plain functions over a DB session factory, so tests call them directly and the Celery
task stays a thin wrapper. The DB is the source of truth: a job row records its stage,
so a re-delivered message resumes (from the current serving version) instead of starting
over, and a job re-delivered more than ``max_job_attempts`` times fails visibly.

One job at a time per model: a lease on the ``model`` row (``workers/lease.py``), renewed
while the job runs, so versions never fork and a dead worker's lock expires.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from app.core import db
from app.core.config import Settings
from app.core.errors import database_unavailable
from app.db.models import ErasureRequest, ErasureTarget, Model, ModelVersion, Sample, UnlearningJob, utcnow
from app.ml.spec import Example
from app.ml.specs import get_spec
from app.services import audit, notify
from app.services import models as model_service
from workers.lease import LeaseKeeper, acquire_lock, release_lock

log = logging.getLogger("lethe.pipeline")
ACTOR = "worker"
# Where each stage sits on the request's percent bar.
STAGE_SPAN = {"collecting": (0, 5), "deleting_data": (5, 10), "unlearning": (10, 75), "verifying": (75, 85),
              "publishing": (85, 90), "deploying": (90, 99), "completed": (100, 100)}


@dataclass
class Worker:
    """What a job needs from its process."""

    settings: Settings
    engine: Engine | None  # None: the app's default session factory (tests rebind it)
    device: Any  # torch.device
    # Unique per Worker instance, made when it is built: a value computed at import time would
    # be shared by every prefork child of one Celery worker, and the lease could not tell them apart.
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    publish: Callable[[str, int], Any] = lambda name, version: None
    sleep: Callable[[float], None] = time.sleep
    # Jobs this worker saw interrupted by a database outage: resuming them is not a re-delivery
    # (``max_job_attempts`` is there to stop a job that kills its worker, not to punish DB blips).
    db_interrupted: set[str] = field(default_factory=set)

    def session(self) -> Session:
        return Session(self.engine) if self.engine is not None else db.new_session()


# ---------------------------------------------------------------- entry point


def queued_count(w: Worker, model_name: str) -> int:
    with w.session() as s:
        return len(s.exec(select(ErasureTarget.id).where(ErasureTarget.model_name == model_name,
                                                         ErasureTarget.status == "queued")).all())


def drain(w: Worker, model_name: str) -> list[str]:
    """Run jobs for ``model_name`` until nothing is queued. Returns the job ids run.

    Returns at once when another live worker holds the model's lease: that worker's
    drain loop picks up what is queued, and re-checks after releasing the lease.
    """
    done: list[str] = []
    while True:
        if not acquire_lock(w, model_name):
            return done
        try:
            with LeaseKeeper(w, model_name):
                _run_jobs(w, model_name, done)
        finally:
            release_lock(w, model_name)
        if queued_count(w, model_name) == 0:  # a request may have arrived while we held the lease
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
                        type(exc.orig).__name__)
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
    """Resume an orphaned job of this model, or gather queued targets into a new one."""
    while (outcome := _resume_orphan(w, model_name)) == "gave_up":
        pass  # that orphan failed visibly; look for another
    if outcome is not None:
        return outcome
    with w.session() as s:
        first = s.exec(select(ErasureTarget).where(ErasureTarget.model_name == model_name,
                                                   ErasureTarget.status == "queued")
                       .order_by(col(ErasureTarget.queued_at))).first()
        if first is None:
            return None
    wait = w.settings.batch_window_s - (utcnow() - first.queued_at).total_seconds()
    if wait > 0:  # let more requests arrive: 100 requests in a minute become one job
        w.sleep(wait)
    with w.session() as s:
        q = (select(ErasureTarget).where(ErasureTarget.model_name == model_name, ErasureTarget.status == "queued")
             .order_by(col(ErasureTarget.queued_at)).limit(w.settings.batch_max))
        if s.get_bind().dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        targets = s.exec(q).all()
        if not targets:
            return None
        job = UnlearningJob(model_name=model_name, request_ids=sorted({t.request_id for t in targets}),
                            worker_host=w.owner, device=str(w.device), stage="collecting")
        s.add(job)
        s.flush()
        for t in targets:
            t.status, t.job_id = "running", job.id
            s.add(t)
        for req in _requests(s, job):
            req.status, req.stage, req.percent = "running", "collecting", 0.0
            s.add(req)
            notify.status_changed(s, req)
        job.policy = _job_policy(s, job)
        audit.append(s, type="job_started", actor=ACTOR,
                     payload={"job_id": job.id, "model": model_name, "requests": job.request_ids,
                              "device": str(w.device), "worker": w.owner})
        s.commit()
        return job.id


def _resume_orphan(w: Worker, model_name: str) -> str | None:
    """Id of a job left running by a dead worker (we hold the lease), "gave_up", or None."""
    with w.session() as s:
        orphan = s.exec(select(UnlearningJob).where(UnlearningJob.model_name == model_name,
                                                    col(UnlearningJob.status).in_(("running", "deploying")))
                        .order_by(col(UnlearningJob.started_at))).first()
        if orphan is None:
            return None
        cause = "database_unavailable" if orphan.id in w.db_interrupted else "redelivered"
        w.db_interrupted.discard(orphan.id)
        if cause == "redelivered":
            orphan.deliveries += 1
        if orphan.deliveries > w.settings.max_job_attempts:
            fail_job(s, orphan, f"job was interrupted {orphan.deliveries - 1} times; giving up")
            s.commit()
            return "gave_up"
        audit.append(s, type="job_resumed", actor=ACTOR,
                     payload={"job_id": orphan.id, "model": model_name, "delivery": orphan.deliveries,
                              "cause": cause})
        s.add(orphan)
        s.commit()
        return orphan.id


def _requests(s: Session, job: UnlearningJob) -> list[ErasureRequest]:
    return list(s.exec(select(ErasureRequest).where(col(ErasureRequest.id).in_(job.request_ids))).all())


def _job_policy(s: Session, job: UnlearningJob) -> str:
    """The strictest policy any request in the batch asked for: an explicit method wins over auto."""
    named = sorted({r.policy for r in _requests(s, job) if r.policy and r.policy != "auto"})
    return "retrain" if len(named) > 1 else (named[0] if named else "auto")


# ---------------------------------------------------------------- one job


def set_progress(w: Worker, job_id: str, stage: str, fraction: float = 0.0) -> None:
    lo, hi = STAGE_SPAN.get(stage, (0, 100))
    status = {"verifying": "verifying", "deploying": "deploying", "publishing": "verifying"}.get(stage, "running")
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        job.stage = stage
        s.add(job)
        for req in _requests(s, job):
            if req.status not in ("running", "verifying", "deploying"):
                continue
            changed = req.status != status
            req.status, req.stage = status, stage
            req.percent = lo + (hi - lo) * max(0.0, min(1.0, fraction))
            s.add(req)
            if changed:
                notify.status_changed(s, req)
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


def _examples(rows: list[Sample]) -> list[Example]:
    return [Example(subject_id=r.subject_key, split=r.split, features=r.features, label=r.label) for r in rows]


def run_job(w: Worker, job_id: str) -> None:
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        model = s.get(Model, job.model_name)
        serving = model_service.get_version(s, model.name, model.serving_version)
        already_free = set(job.request_ids) <= set(serving.free_of)
        job.lease_until = utcnow()
        s.add(job)
        s.commit()
    if not already_free:  # a re-delivered job that already published skips straight to deploy
        if not unlearn_and_publish(w, job_id):
            return
    deploy_and_complete(w, job_id)


def unlearn_and_publish(w: Worker, job_id: str) -> bool:
    from workers.unlearning.engine import forget

    spec = None
    set_progress(w, job_id, "deleting_data")
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        spec = get_spec(job.model_name)
        keys = sorted({r.subject_key for r in _requests(s, job)})
        forget_rows = list(s.exec(select(Sample).where(Sample.model_name == job.model_name,
                                                       col(Sample.subject_key).in_(keys))).all())
        newly = [r for r in forget_rows if not r.deleted]
        for r in newly:  # excluded from every later use at once; hard-deleted when the job completes
            r.deleted = True
            s.add(r)
        for req in _requests(s, job):
            n = sum(1 for r in forget_rows if r.subject_key == req.subject_key)
            audit.append(s, type="samples_deleted", actor=ACTOR, request_id=req.id, subject_key=req.subject_key,
                         payload={"model": job.model_name, "samples": n, "job_id": job.id})
        s.commit()
        live = lambda split: _examples(list(s.exec(select(Sample).where(  # noqa: E731
            Sample.model_name == job.model_name, Sample.split == split, col(Sample.deleted).is_(False))).all()))
        retain, test, holdout = live("train"), live("test"), live("holdout")
        forget_train = _examples([r for r in forget_rows if r.split == "train"])
        # The same subjects' never-trained samples: the cleanest non-member population.
        forget_unseen = _examples([r for r in forget_rows if r.split == "test"])
        subject_ids = sorted({sid for r in forget_rows if (sid := spec.subject_id_of(r.features))})
        model = s.get(Model, job.model_name)
        serving = model_service.get_version(s, model.name, model.serving_version)
        serving_info = (serving.number, serving.artifact_path, serving.sha256, dict(serving.metrics),
                        list(serving.free_of), dict(model.config))
        job.version_before = serving.number
        s.add(job)
        s.commit()
        request_ids, policy = list(job.request_ids), job.policy
    number, path, sha, metrics, free_of, config = serving_info
    progress = throttled_progress(w, job_id)
    t0 = time.monotonic()
    if not forget_train and not subject_ids:
        # The subjects' samples were never trained on (test / holdout only): the serving
        # version is already free of them; record that instead of changing the model.
        with w.session() as s:
            v = model_service.get_version(s, job_model(s, job_id), number)
            v.free_of = sorted(set(v.free_of) | set(request_ids))
            s.add(v)
            _record(s, job_id, method="none", attempts=[], version_after=number, seconds=0.0)
            s.commit()
        return True
    from app.ml.checkpoint import load_checkpoint

    progress("unlearning", 0.0)
    served, meta, _ = load_checkpoint(path, spec, expected_sha256=sha, device=w.device)
    outcome = forget(spec=spec, model=served, meta=meta, forget=forget_train, retain=retain, test=test,
                     holdout=holdout, forget_subject_ids=subject_ids, forget_unseen=forget_unseen,
                     policy=policy, device=w.device,
                     seed=0, progress=progress, baseline=metrics, reference=config.get("reference"),
                     config=config.get("methods"))
    seconds = time.monotonic() - t0
    set_progress(w, job_id, "publishing")
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        if not holds_fence(s, w, job, serving=number):
            s.commit()  # the job_fenced audit event
            return False
        if not outcome.passed:
            _record(s, job_id, method=None, attempts=outcome.attempts, version_after=None, seconds=seconds)
            fail_job(s, job, "no unlearning method passed verification; the serving model is unchanged")
            s.commit()
            return False
        report = outcome.attempts[-1]["report"] if outcome.attempts else {}
        new_metrics = {k: report.get(k) for k in ("retain_acc", "test_acc", "forget_acc", "mia_auc")
                       if k in report}
        new_metrics["train_acc"] = new_metrics.get("retain_acc")
        version = model_service.register_trained(
            s, name=job.model_name, model_obj=outcome.model, meta=outcome.meta, metrics=new_metrics,
            artifacts_dir=Path(w.settings.artifacts_dir), method=outcome.method, parent=number,
            free_of=sorted(set(free_of) | set(request_ids)), actor=ACTOR)
        model_service.set_serving(s, name=job.model_name, number=version.number, actor=ACTOR)
        _record(s, job_id, method=outcome.method, attempts=outcome.attempts, version_after=version.number,
                seconds=seconds)
        for attempt in outcome.attempts:
            audit.append(s, type="unlearning_attempted", actor=ACTOR,
                         payload={"job_id": job_id, "model": job.model_name, "method": attempt["method"],
                                  "passed": attempt["passed"], "seconds": attempt["seconds"]})
        s.commit()
        w.publish(job.model_name, version.number)
    return True


def holds_fence(s: Session, w: Worker, job: UnlearningJob, *, serving: int) -> bool:
    """Whether this worker may still write the job's outcome: it holds the model's lease, the
    job is still open, and the model still serves ``serving``. Locks the model row first, so the
    check and the write that follows are one step (SQLite: the session's BEGIN IMMEDIATE).

    A worker that stalled past its lease (a long GC pause, a frozen VM) finds that another
    worker has taken the job over; it must then drop its result, or the version history forks
    and the request completes twice.
    """
    q = select(Model).where(Model.name == job.model_name)
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    model = s.exec(q).one()
    s.refresh(job)
    if model.lock_owner == w.owner and job.status in ("running", "deploying") and model.serving_version == serving:
        return True
    log.warning("job %s: lease lost or job taken over; dropping this worker's result", job.id)
    audit.append(s, type="job_fenced", actor=ACTOR,
                 payload={"job_id": job.id, "model": job.model_name, "worker": w.owner, "lock_owner": model.lock_owner,
                          "job_status": job.status, "expected_version": serving, "serving_version": model.serving_version})
    return False


def job_model(s: Session, job_id: str) -> str:
    return s.get(UnlearningJob, job_id).model_name


def _record(s: Session, job_id: str, *, method: str | None, attempts: list[dict[str, Any]],
            version_after: int | None, seconds: float) -> None:
    job = s.get(UnlearningJob, job_id)
    job.method, job.attempts, job.version_after = method, attempts, version_after
    job.timings = {**job.timings, "unlearn_s": round(seconds, 3)}
    job.status = "deploying" if version_after is not None else job.status
    s.add(job)


def fail_job(s: Session, job: UnlearningJob, error: str) -> None:
    """Fail visibly: job, its targets and requests; the reconciler never silently re-runs it."""
    job.status, job.error, job.finished_at = "failed", error, utcnow()
    s.add(job)
    for t in s.exec(select(ErasureTarget).where(ErasureTarget.job_id == job.id)).all():
        t.status = "failed"
        s.add(t)
    for req in _requests(s, job):
        req.status, req.error = "failed", error
        s.add(req)
        notify.status_changed(s, req)
        audit.append(s, type="erasure_failed", actor=ACTOR, request_id=req.id, subject_key=req.subject_key,
                     payload={"job_id": job.id, "model": job.model_name, "error": error})


def deploy_and_complete(w: Worker, job_id: str) -> None:
    set_progress(w, job_id, "deploying")
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        target_version, name = job.version_after, job.model_name
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
                fail_job(s, s.get(UnlearningJob, job_id),
                         f"{len(stale)} live replica(s) did not load version {target_version} in time")
                s.commit()
            return
        w.sleep(0.2)
    with w.session() as s:
        job = s.get(UnlearningJob, job_id)
        if holds_fence(s, w, job, serving=target_version):
            complete_job(s, job, w.settings, deploy_s=time.monotonic() - t0)
        s.commit()


def complete_job(s: Session, job: UnlearningJob, settings: Settings, *, deploy_s: float) -> None:
    keys = sorted({r.subject_key for r in _requests(s, job)})
    purged = s.exec(delete(Sample).where(Sample.model_name == job.model_name, col(Sample.subject_key).in_(keys)))
    audit.append(s, type="samples_purged", actor=ACTOR,
                 payload={"job_id": job.id, "model": job.model_name, "samples": purged.rowcount})
    now = utcnow()
    job.status, job.stage, job.finished_at = "completed", "completed", now
    job.timings = {**job.timings, "deploy_s": round(deploy_s, 3),
                   "total_s": round((now - job.started_at).total_seconds(), 3)}
    s.add(job)
    for t in s.exec(select(ErasureTarget).where(ErasureTarget.job_id == job.id)).all():
        t.status = "done"
        s.add(t)
    s.flush()
    purge_tainted_artifacts(s, job.model_name, settings)
    for req in _requests(s, job):
        targets = s.exec(select(ErasureTarget).where(ErasureTarget.request_id == req.id)).all()
        result = dict(req.result or {})
        notified = model_service.notify_recipients(s, name=job.model_name, request_id=req.id,
                                                   version_before=job.version_before,
                                                   version_after=job.version_after, completed_at=now)
        result.setdefault("models", {})[job.model_name] = {
            "job_id": job.id, "version_before": job.version_before, "version_after": job.version_after,
            "method": job.method, "attempts": job.attempts, "timings": job.timings,
            "recipients_notified": notified}
        req.result = result
        if all(t.status in ("done", "cancelled") for t in targets):
            req.status, req.stage, req.percent, req.completed_at = "completed", "completed", 100.0, now
            req.result = {**result, "time_to_forget_s": round((now - req.received_at).total_seconds(), 3)}
            audit.append(s, type="erasure_completed", actor=ACTOR, request_id=req.id, subject_key=req.subject_key,
                         payload={"models": sorted(result["models"]), "version_after": job.version_after,
                                  "method": job.method})
            notify.status_changed(s, req)
        s.add(req)


def purge_tainted_artifacts(s: Session, model_name: str, settings: Settings) -> None:
    """Delete weight files of versions that carry a completed erasure and that no live replica serves."""
    served = {r.version for r in model_service.live_replicas(s, name=model_name, ttl_s=settings.replica_ttl_s)}
    for v in s.exec(select(ModelVersion).where(ModelVersion.model_name == model_name,
                                               ModelVersion.state != "purged")).all():
        if v.number in served or not model_service.taint_of(s, v):
            continue
        _purge_files(s, v)
        v.state = "purged"
        s.add(v)
        audit.append(s, type="artifact_purged", actor=ACTOR,
                     payload={"model": model_name, "version": v.number, "sha256": v.sha256})


def _purge_files(s: Session, version: ModelVersion) -> None:
    """Delete a version's weights and the directories its meta references (SISA slice
    checkpoints, amnesiac update logs: they hold the erased subject's influence too), unless a
    version that is not purged still references the same directory."""
    import shutil

    from app.ml.checkpoint import companion_dirs, read_meta

    path = Path(version.artifact_path)
    dirs = companion_dirs(read_meta(path)) if path.exists() else []
    keep = set()
    for other in s.exec(select(ModelVersion).where(ModelVersion.model_name == version.model_name,
                                                   ModelVersion.state != "purged",
                                                   ModelVersion.id != version.id)).all():
        if Path(other.artifact_path).exists():
            keep |= {d.resolve() for d in companion_dirs(read_meta(other.artifact_path))}
    for d in dirs:
        if d.resolve() not in keep:
            shutil.rmtree(d, ignore_errors=True)
    path.unlink(missing_ok=True)


# ---------------------------------------------------------------- reconciler


def reconcile(w: Worker, send: Callable[[str], Any]) -> list[str]:
    """Re-send work the queue may have lost: models with queued targets or orphaned jobs."""
    with w.session() as s:
        queued = set(s.exec(select(ErasureTarget.model_name).where(ErasureTarget.status == "queued")).all())
        now = utcnow()
        orphaned = {m.name for m in s.exec(select(Model)).all()
                    if (m.lock_until is None or m.lock_until < now)
                    and s.exec(select(UnlearningJob.id).where(UnlearningJob.model_name == m.name,
                                                             col(UnlearningJob.status).in_(("running", "deploying")))
                               ).first() is not None}
    names = sorted(queued | orphaned)
    for name in names:
        send(name)
    return names
