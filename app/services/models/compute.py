"""Compute accounting (issue 16 section 4): what erasures cost, per job and per completed erasure.

Each job records the seconds its unlearning and verification took (``UnlearningJob.compute_s``),
on which ``device``, in which ``phase`` (``interim`` or ``exact``). Jobs and targets are never
deleted, so the Prometheus counters are sums over those rows at scrape time -- monotonic, the same
on every API replica -- and ``lethe_time_to_interim_seconds`` is a DB-kept histogram like
``lethe_time_to_forget_seconds`` (``app/services/metrics.py``), observed in the transaction that
moves a request to ``scheduled``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import Session, col, func, select

from app.core import db
from app.db.models import ErasureTarget, UnlearningJob, utcnow
from app.services import metrics
from app.services.models import schedule as schedule_service
from app.services.requests.lifecycle import TargetStatus

TIME_TO_INTERIM = "lethe_time_to_interim_seconds"
WINDOW_DAYS = 30


def observe_time_to_interim(session: Session, seconds: float) -> None:
    deltas = {f"bucket:{metrics._le(b)}": 1.0 for b in (*metrics.BUCKETS, float("inf")) if seconds <= b}
    metrics.increment(session, TIME_TO_INTERIM, {**deltas, "sum": seconds, "count": 1.0})


def per_erasure(session: Session, *, name: str, days: int = WINDOW_DAYS) -> dict[str, Any]:
    """Compute per completed erasure of one model over the last ``days``: every job that finished
    in the window (interim, exact, failed attempts too) over the erasures completed in it."""
    since = utcnow() - timedelta(days=days)
    rows = session.exec(select(UnlearningJob.phase, UnlearningJob.device, func.count(),
                               func.coalesce(func.sum(UnlearningJob.compute_s), 0.0))
                        .where(UnlearningJob.model_name == name, col(UnlearningJob.finished_at) >= since)
                        .group_by(UnlearningJob.phase, UnlearningJob.device)).all()
    done = session.exec(select(func.count()).select_from(ErasureTarget).join(
        UnlearningJob, col(UnlearningJob.id) == col(ErasureTarget.job_id)).where(
        ErasureTarget.model_name == name, ErasureTarget.status == TargetStatus.DONE,
        col(UnlearningJob.finished_at) >= since)).one()
    total = float(sum(r[3] for r in rows))
    by_phase: dict[str, dict[str, float]] = {}
    for phase, device, n, seconds in rows:
        p = by_phase.setdefault(phase, {"jobs": 0, "compute_s": 0.0})
        p["jobs"] += n
        p["compute_s"] = round(p["compute_s"] + float(seconds), 3)
    return {"window_days": days, "erasures_completed": int(done), "compute_s": round(total, 3),
            "compute_per_erasure_s": round(total / done, 3) if done else None, "by_phase": by_phase,
            "devices": sorted({str(r[1]) for r in rows if r[1]})}


class ComputeCollector(Collector):
    """``lethe_compute_seconds_total{model,phase,method}``, ``lethe_erasures_completed_total{model}``,
    ``lethe_time_to_interim_seconds`` and ``lethe_erasures_at_risk{model}``, read from the DB on each scrape."""

    def collect(self) -> Iterator[object]:
        try:
            with db.session_scope() as s:
                spent = s.exec(select(UnlearningJob.model_name, UnlearningJob.phase, UnlearningJob.method,
                                      func.coalesce(func.sum(UnlearningJob.compute_s), 0.0))
                               .group_by(UnlearningJob.model_name, UnlearningJob.phase, UnlearningJob.method)).all()
                done = s.exec(select(ErasureTarget.model_name, func.count())
                              .where(ErasureTarget.status == TargetStatus.DONE)
                              .group_by(ErasureTarget.model_name)).all()
                buckets, total = metrics.read_histogram(s, TIME_TO_INTERIM)
                at_risk = schedule_service.at_risk_by_model(s)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blipped
            return
        c = CounterMetricFamily("lethe_compute_seconds", "Unlearning and verification seconds spent by jobs, by "
                                "model, phase (interim, exact) and served method", labels=["model", "phase", "method"])
        for model, phase, method, seconds in spent:
            c.add_metric([model, phase, method or "none"], float(seconds))
        yield c
        c = CounterMetricFamily("lethe_erasures_completed", "(request, model) erasures completed by an exact "
                                "(or audited) version serving on every live replica", labels=["model"])
        for model, n in done:
            c.add_metric([model], n)
        yield c
        h = HistogramMetricFamily(TIME_TO_INTERIM, "Receipt to every live replica serving the interim version "
                                  "(scheduled erasures)")
        h.add_metric([], buckets, total)
        yield h
        g = GaugeMetricFamily("lethe_erasures_at_risk", "Scheduled erasures whose exact version, started now at "
                              "the safety factor, would end after exact_due_at (or already past it)", labels=["model"])
        for model, n in sorted(at_risk.items()):
            g.add_metric([model], n)
        yield g

    def describe(self) -> list:
        return []


_registered: list[Collector] = []


def register() -> None:
    if not _registered:
        from prometheus_client import REGISTRY

        _registered.append(ComputeCollector())
        REGISTRY.register(_registered[0])
