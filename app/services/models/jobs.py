"""Unlearning jobs' state in the registry: open, progress, fail (retry with backoff), complete.

Plain functions over a session (the caller commits); the worker's pipeline orchestrates them.
Request statuses change only through ``app/services/requests/lifecycle.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, func, select

from app.core.config import Settings
from app.data import registry
from app.db.models import ErasureRequest, ErasureTarget, ModelVersion, UnlearningJob, utcnow
from app.core.errors import NotFound
from app.services import audit
from app.services.requests import lifecycle
from app.services.storage import deletions
from app.services.models import catalog as model_service
from app.services.requests.lifecycle import TargetStatus

ACTOR = "worker"
# Where each stage sits on the request's percent bar.
STAGE_SPAN = {"collecting": (0, 5), "deleting_data": (5, 10), "unlearning": (10, 75), "verifying": (75, 85),
              "publishing": (85, 90), "deploying": (90, 99), "completed": (100, 100)}


def due_targets(model_name: str):  # noqa: ANN201 - a select
    """Targets a job may take: queued, and past their retry backoff."""
    now = utcnow()
    return select(ErasureTarget).where(ErasureTarget.model_name == model_name, ErasureTarget.status == TargetStatus.QUEUED,
                                       col(ErasureTarget.not_before).is_(None) | (col(ErasureTarget.not_before) <= now))


def due_count(session: Session, model_name: str) -> int:
    """How many targets a job could take now (queued and past their retry backoff)."""
    return session.exec(select(func.count()).select_from(due_targets(model_name).subquery())).one()


def oldest_due_queued_at(session: Session, model_name: str) -> datetime | None:
    """When the longest-waiting due target was queued (the batch window counts from it)."""
    first = session.exec(due_targets(model_name).order_by(col(ErasureTarget.queued_at))).first()
    return first.queued_at if first is not None else None


def orphaned_job(session: Session, model_name: str) -> UnlearningJob | None:
    """The oldest job of the model still marked running or deploying: left by a dead worker when the
    caller holds the model's lease."""
    return session.exec(select(UnlearningJob).where(UnlearningJob.model_name == model_name,
                                                    col(UnlearningJob.status).in_(("running", "deploying")))
                        .order_by(col(UnlearningJob.started_at))).first()


def get_job(session: Session, *, job_id: str) -> UnlearningJob:
    job = session.get(UnlearningJob, job_id)
    if job is None:
        raise NotFound(f"No unlearning job {job_id!r}.", code="job_not_found")
    return job


def requests_of(session: Session, job: UnlearningJob) -> list[ErasureRequest]:
    return list(session.exec(select(ErasureRequest).where(col(ErasureRequest.id).in_(job.request_ids))).all())


def targets_of(session: Session, job: UnlearningJob) -> list[ErasureTarget]:
    return list(session.exec(select(ErasureTarget).where(ErasureTarget.job_id == job.id)).all())


def open_job(session: Session, *, model_name: str, targets: list[ErasureTarget], worker: str, device: str,
             phase: str = "exact", policy: str | None = None) -> UnlearningJob:
    """A job for ``targets`` (queued, due): each counts one more attempt; their requests start.
    ``phase``: ``exact`` or a scheduled model's ``interim`` (issue 16); ``policy`` overrides the batch's."""
    job = UnlearningJob(model_name=model_name, request_ids=sorted({t.request_id for t in targets}),
                        worker_host=worker, device=device, stage="collecting", phase=phase)
    session.add(job)
    session.flush()
    for t in targets:
        t.status, t.job_id, t.attempts, t.not_before = TargetStatus.RUNNING, job.id, t.attempts + 1, None
        session.add(t)
    requests = requests_of(session, job)
    for req in requests:
        lifecycle.start(session, req, job_id=job.id)
    job.policy = policy or _job_policy(requests)
    audit.append(session, type="job_started", actor=ACTOR,
                 payload={"job_id": job.id, "model": model_name, "phase": phase, "requests": job.request_ids,
                          "device": device,
                          "worker": worker, "attempts": max(t.attempts for t in targets)})
    return job


def _job_policy(requests: list[ErasureRequest]) -> str:
    """The strictest policy any request in the batch asked for: an explicit method wins over auto."""
    named = sorted({r.policy for r in requests if r.policy and r.policy != "auto"})
    return "retrain" if len(named) > 1 else (named[0] if named else "auto")


def set_stage(session: Session, job: UnlearningJob, stage: str, fraction: float = 0.0) -> None:
    lo, hi = STAGE_SPAN.get(stage, (0, 100))
    job.stage = stage
    session.add(job)
    within = lo + (hi - lo) * max(0.0, min(1.0, fraction))
    for req in requests_of(session, job):
        lifecycle.progress(session, req, stage=stage, percent=request_percent(job.phase, req, within))


def request_percent(phase: str, req: ErasureRequest, within: float) -> float:
    """A job's percent (0-100) on its request's bar: a scheduled erasure's two steps (issue 16) share
    it, the interim job 0-50 (``scheduled`` is 50) and the exact job 50-100; an erasure done in one
    job uses the whole bar."""
    if phase == "interim":
        return within / 2
    return 50 + within / 2 if req.exact_due_at is not None else within


def owed_subjects(session: Session, model_name: str) -> set[str]:
    """Subject keys of this model's erasures that have not completed: never trained on again."""
    return set(session.exec(select(ErasureRequest.subject_key).join(
        ErasureTarget, col(ErasureTarget.request_id) == col(ErasureRequest.id)).where(
        ErasureTarget.model_name == model_name,
        col(ErasureTarget.status).in_((TargetStatus.QUEUED, TargetStatus.RUNNING, TargetStatus.SCHEDULED,
                                       TargetStatus.FAILED)))).all())


def fail_job(session: Session, job: UnlearningJob, error: str, settings: Settings) -> None:
    """The job failed; its requests stay owed: retried with backoff, ``failed`` after
    ``max_request_attempts`` jobs (``lifecycle.attempt_failed``). Never silently re-run."""
    job.status, job.error, job.finished_at = "failed", error, utcnow()
    session.add(job)
    targets = targets_of(session, job)
    for req in requests_of(session, job):
        lifecycle.attempt_failed(session, req, [t for t in targets if t.request_id == req.id], job_id=job.id,
                                 error=error, max_attempts=settings.max_request_attempts,
                                 backoff_s=settings.retry_backoff_s, actor=ACTOR)


def purge_samples(session: Session, job: UnlearningJob, settings: Settings) -> int:
    """Every live replica serves a version free of the batch: remove its raw samples for good. The
    worker commits this on its own, *before* the completion, so that the database files can be
    compacted (``app/data/physical.py``) before the request says ``completed`` (issue 18); the rows
    were excluded from all training since the job started, so nothing needs them. Once per job
    (``timings["samples_purged"]``): a retry after a crash between the two commits skips it."""
    if "samples_purged" in job.timings:
        return int(job.timings["samples_purged"])
    keys = sorted({r.subject_key for r in requests_of(session, job)})
    purged = registry.purge(session, model_service.get_model(session, job.model_name), keys, settings.data_dir)
    audit.append(session, type="samples_purged", actor=ACTOR,
                 payload={"job_id": job.id, "model": job.model_name, "samples": purged})
    job.timings = {**job.timings, "samples_purged": purged}
    session.add(job)
    return purged


def complete_job(session: Session, job: UnlearningJob, settings: Settings, *, deploy_s: float) -> None:
    """Every live replica serves a version free of the batch: purge the raw samples (unless
    :func:`purge_samples` did already) and the tainted artifacts, complete the targets and
    (through ``lifecycle``) the requests."""
    requests = requests_of(session, job)
    purge_samples(session, job, settings)
    now = utcnow()
    job.status, job.stage, job.finished_at = "completed", "completed", now
    job.timings = {**job.timings, "deploy_s": round(deploy_s, 3),
                   "total_s": round((now - job.started_at).total_seconds(), 3)}
    session.add(job)
    for t in targets_of(session, job):
        t.status = TargetStatus.DONE
        session.add(t)
    session.flush()
    purge_tainted_artifacts(session, job.model_name, settings)
    for req in requests:
        # A request of several models may wait for another model's retry (queued) or have
        # failed there: this model's part is still recorded; only a finished request is left alone.
        if req.status in lifecycle.FINISHED:
            continue
        lifecycle.complete_model(session, req, model_name=job.model_name, actor=ACTOR, detail={
            "job_id": job.id, "version_before": job.version_before, "version_after": job.version_after,
            "method": job.method, "seed": job.timings.get("seed"), "attempts": job.attempts,
            "timings": job.timings}, completed_at=now)


def record_outcome(session: Session, job: UnlearningJob, *, method: str | None, attempts: list[dict[str, Any]],
                   version_after: int | None, seconds: float) -> None:
    job.method, job.attempts, job.version_after = method, attempts, version_after
    job.timings = {**job.timings, "unlearn_s": round(seconds, 3)}
    job.compute_s = round((job.compute_s or 0.0) + max(seconds, 0.0), 3)  # compute accounting (issue 16)
    job.status = "deploying" if version_after is not None else job.status
    session.add(job)


def purge_tainted_artifacts(session: Session, model_name: str, settings: Settings) -> None:
    """Purge versions that carry a completed erasure and that no live replica serves: marked purged, their
    files scheduled for deletion after this transaction commits (``deletions``)."""
    served = {r.version for r in model_service.live_replicas(session, name=model_name, ttl_s=settings.replica_ttl_s)}
    kept = settings.keep_tainted_versions  # 0 outside tests (refused in production)
    for v in session.exec(select(ModelVersion).where(ModelVersion.model_name == model_name, ModelVersion.state != "purged")
                          .order_by(col(ModelVersion.number).desc())).all():
        if v.number in served or not model_service.taint_of(session, v):
            continue
        if kept > 0:
            kept -= 1
            continue
        _purge_files(session, v)
        v.state = "purged"
        session.add(v)
        audit.append(session, type="artifact_purged", actor=ACTOR,
                     payload={"model": model_name, "version": v.number, "sha256": v.sha256})


def _purge_files(session: Session, version: ModelVersion) -> None:
    """Schedule a version's weights and the directories its meta references (SISA slice
    checkpoints, amnesiac update logs: they hold the erased subject's influence too) for deletion
    after the commit that marks it purged (``deletions``), unless a version that is not purged
    still references the same directory. Deleting them here, before the commit, would leave a
    version the database still calls rollback-eligible without its files if the commit failed."""
    from app.ml.checkpoint import companion_dirs, read_meta

    path = Path(version.artifact_path)
    dirs = companion_dirs(read_meta(path)) if path.exists() else []
    keep = set()
    for other in session.exec(select(ModelVersion).where(ModelVersion.model_name == version.model_name,
                                                         ModelVersion.state != "purged",
                                                         ModelVersion.id != version.id)).all():
        if Path(other.artifact_path).exists():
            keep |= {d.resolve() for d in companion_dirs(read_meta(other.artifact_path))}
    reason = f"{version.model_name} v{version.number} purged"
    for d in dirs:
        if d.resolve() not in keep:
            deletions.schedule_deletion(session, d, reason=reason)
    deletions.schedule_deletion(session, path, reason=reason)
