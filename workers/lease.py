"""One job at a time per model: a lease on the ``model`` row (``lock_owner``/``lock_until``).

The lease is renewed every third of its length while a job runs, so versions never fork, and a
dead worker's lease simply expires (the reconciler then re-sends its model's work).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from app.db.models import Model, UnlearningJob, utcnow
from app.services import audit

if TYPE_CHECKING:
    from workers.context import Worker

log = logging.getLogger("lethe.lease")


def acquire_lock(w: Worker, model_name: str) -> bool:
    now = utcnow()
    with w.session() as s:
        res = s.exec(update(Model).where(Model.name == model_name)
                     .where(or_(col(Model.lock_owner).is_(None), col(Model.lock_until) < now,
                                Model.lock_owner == w.owner))
                     .values(lock_owner=w.owner, lock_until=now + timedelta(seconds=w.settings.job_lease_s)))
        s.commit()
        return res.rowcount == 1


def release_lock(w: Worker, model_name: str) -> None:
    with w.session() as s:
        s.exec(update(Model).where(Model.name == model_name, Model.lock_owner == w.owner)
               .values(lock_owner=None, lock_until=None))
        s.commit()


class LeaseKeeper:
    """Renews the model lease every third of its length while a job runs."""

    def __init__(self, w: Worker, model_name: str) -> None:
        self.w, self.model_name, self._stop = w, model_name, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lethe-lease")

    def _run(self) -> None:
        while not self._stop.wait(self.w.settings.job_lease_s / 3):
            try:
                if not acquire_lock(self.w, self.model_name):
                    # Another worker took the lease over (ours expired while we stalled). Stop
                    # renewing; the job's fence (``pipeline.holds_fence``) drops our result.
                    log.warning("lease on %s lost to another worker", self.model_name)
                    return
            except Exception:  # noqa: BLE001 - a DB blip; the next renewal retries
                log.warning("lease renewal failed for %s", self.model_name, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


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
    audit.append(s, type="job_fenced", actor="worker",
                 payload={"job_id": job.id, "model": job.model_name, "worker": w.owner, "lock_owner": model.lock_owner,
                          "job_status": job.status, "expected_version": serving, "serving_version": model.serving_version})
    return False
