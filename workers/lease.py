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
from sqlmodel import col

from app.db.models import Model, utcnow

if TYPE_CHECKING:
    from workers.pipeline import Worker

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
