"""Prometheus metrics computed from the DB at scrape time.

The DB is the source of truth and the worker (not the API process that is scraped)
completes requests, so the time-to-forget histogram is read from completed requests
rather than observed in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import col, func, select

from app.core import db
from app.db.models import ErasureRequest, utcnow

BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600)
WINDOW = timedelta(days=30)


def time_to_forget_histogram(values: list[float]) -> tuple[list[tuple[str, float]], float]:
    buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in BUCKETS]
    return buckets + [("+Inf", float(len(values)))], float(sum(values))


class ErasureCollector(Collector):
    def collect(self) -> Iterator[object]:
        try:
            with db.session_scope() as session:
                since = utcnow() - WINDOW
                rows = session.exec(select(ErasureRequest.result).where(ErasureRequest.status == "completed",
                                                                       col(ErasureRequest.completed_at) >= since)).all()
                by_status = session.exec(select(ErasureRequest.status, func.count())
                                         .group_by(ErasureRequest.status)).all()
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blipped
            return
        values = [float(r["time_to_forget_s"]) for r in rows if r and "time_to_forget_s" in r]
        buckets, total = time_to_forget_histogram(values)
        h = HistogramMetricFamily("lethe_time_to_forget_seconds",
                                  "Receipt to every live replica serving a version free of the subject "
                                  "(completed requests, last 30 days)")
        h.add_metric([], buckets, total)
        yield h
        g = GaugeMetricFamily("lethe_erasure_requests", "Erasure requests by status", labels=["status"])
        for status, n in by_status:
            g.add_metric([status], n)
        yield g


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        from prometheus_client import REGISTRY

        REGISTRY.register(ErasureCollector())
        _registered = True
