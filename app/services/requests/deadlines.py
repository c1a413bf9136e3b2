"""GDPR clock (Art. 12(3), DESIGN.md section 7): an audit warning at 80 % of the time, a gauge of open
requests by days left.

The gauge is computed at scrape time from the DB (a Prometheus collector), so every API
replica reports the same truth and no worker process has to be scraped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from sqlmodel import Session, col, select

from app.db.models import AuditEvent, ErasureRequest, as_utc
from app.services import audit
from app.services.requests.erasure import OPEN_STATUSES

log = logging.getLogger("lethe.deadlines")
EVENT = "deadline_80_percent"
THRESHOLD = 0.8
# (label, upper bound in days); overdue is anything below 0.
BUCKETS = (("overdue", 0.0), ("0-3", 3.0), ("3-7", 7.0), ("7-14", 14.0), ("14+", float("inf")))


def _open(session: Session) -> list[ErasureRequest]:
    return list(session.exec(select(ErasureRequest).where(col(ErasureRequest.status).in_(OPEN_STATUSES))).all())


def elapsed_fraction(req: ErasureRequest, now: datetime) -> float:
    total = (as_utc(req.due_at) - as_utc(req.received_at)).total_seconds()
    return (now - as_utc(req.received_at)).total_seconds() / total if total > 0 else 1.0


def check(session: Session, *, now: datetime) -> list[str]:
    """Audit ``deadline_80_percent`` once for every open request past 80 % of its time; the caller commits."""
    late = [r for r in _open(session) if elapsed_fraction(r, now) >= THRESHOLD]
    if not late:
        return []
    warned = set(session.exec(select(AuditEvent.request_id).where(
        AuditEvent.type == EVENT, col(AuditEvent.request_id).in_([r.id for r in late]))).all())
    for r in late:
        if r.id in warned:
            continue
        audit.append(session, type=EVENT, actor="lethe", request_id=r.id, subject_key=r.subject_key,
                     payload={"status": r.status, "due_at": audit.ts_str(r.due_at),
                              "elapsed": round(elapsed_fraction(r, now), 3)})
    return sorted(r.id for r in late if r.id not in warned)


def open_by_bucket(session: Session, *, now: datetime) -> dict[str, int]:
    counts = {label: 0 for label, _ in BUCKETS}
    for r in _open(session):
        days = (as_utc(r.due_at) - now).total_seconds() / 86400
        label = next(lbl for lbl, upper in BUCKETS if days < upper)
        counts[label] += 1
    return counts


class DeadlineCollector:
    """``lethe_open_erasure_requests{days_to_due=...}``, read from the DB on each scrape."""

    def __init__(self, session_factory: Callable[[], Session], clock: Callable[[], datetime]) -> None:
        self.session_factory, self.clock = session_factory, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("lethe_open_erasure_requests", "Open erasure requests by days left to the GDPR "
                              "deadline (Art. 12(3)).", labels=["days_to_due"])
        try:
            with self.session_factory() as s:
                counts = open_by_bucket(s, now=self.clock())
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blinked
            log.warning("could not read open erasure requests for metrics", exc_info=True)
            return
        for label, n in counts.items():
            g.add_metric([label], n)
        yield g

    def describe(self) -> list:
        return []  # collected lazily: no DB access at registration


_installed: list[DeadlineCollector] = []


def install_metrics(session_factory: Callable[[], Session], clock: Callable[[], datetime]) -> None:
    """Register the collector once per process."""
    if not _installed:
        collector = DeadlineCollector(session_factory, clock)
        REGISTRY.register(collector)
        _installed.append(collector)
