"""The reconciler: re-send work the queue may have lost (DESIGN.md section 7).

The DB, not the queue, is the source of truth: every beat tick (``reconcile_interval_s``) sends
one message per model that has due erasure targets or an orphaned job, and one per model
registration still queued after its message should have arrived. It also finishes the file side of
completions (issue 23): it drains the to-delete list and schedules orphans for deletion.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from app.db.models import ErasureTarget, Model, ModelRegistration, UnlearningJob, utcnow
from app.services.storage import deletions, orphans
from app.services.requests.lifecycle import TargetStatus

if TYPE_CHECKING:
    from workers.context import Worker


def reconcile(w: Worker, send: Callable[[str], Any]) -> list[str]:
    """Re-send work the queue may have lost: models with due targets or orphaned jobs."""
    with w.session() as s:
        now = utcnow()
        queued = set(s.exec(select(ErasureTarget.model_name).where(
            ErasureTarget.status == TargetStatus.QUEUED,
            col(ErasureTarget.not_before).is_(None) | (col(ErasureTarget.not_before) <= now))).all())
        orphaned = {m.name for m in s.exec(select(Model)).all()
                    if (m.lock_until is None or m.lock_until < now)
                    and s.exec(select(UnlearningJob.id).where(UnlearningJob.model_name == m.name,
                                                             col(UnlearningJob.status).in_(("running", "deploying")))
                               ).first() is not None}
    names = sorted(queued | orphaned)
    for name in names:
        send(name)
    return names


def reconcile_registrations(w: Worker, send: Callable[[str], Any], *, older_than_s: float = 30.0) -> list[str]:
    """Re-send model registrations still queued after ``older_than_s`` (their message was lost)."""
    with w.session() as s:
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        ids = list(s.exec(select(ModelRegistration.id).where(ModelRegistration.status == "queued",
                                                            col(ModelRegistration.created_at) < cutoff)).all())
    for rid in ids:
        send(rid)
    return ids


def reconcile_files(w: Worker, *, older_than_s: float | None = None) -> dict[str, list[str]]:
    """Delete what committed work made obsolete (the to-delete list a crashed drain left), then
    the orphans older than ``orphan_grace_s`` (files of transactions that rolled back)."""
    drained = deletions.drain(w.session)
    grace = w.settings.orphan_grace_s if older_than_s is None else older_than_s
    with w.session() as s:
        found = orphans.find(s, data_dir=w.settings.data_dir, artifacts_dir=w.settings.artifacts_dir,
                             older_than_s=grace)
        for path in found:
            deletions.schedule_deletion(s, path, reason="orphan")
        s.commit()
    return {"drained": drained, "orphans": [str(p) for p in found], "deleted": deletions.drain(w.session)}
