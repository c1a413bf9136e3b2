"""Prometheus metrics computed from the DB at scrape time.

The DB is the source of truth and the worker (not the API process that is scraped)
completes requests, so the time-to-forget histogram is read from completed requests
rather than observed in-process. Every API replica reports the same DB truth, so alert rules
aggregate across scraped instances with ``max`` (deploy/prometheus/alerts.yml).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlmodel import col, func, select

from app.core import db
from app.core.config import get_settings
from app.db.models import CallbackDelivery, ErasureRequest, Model, Replica, as_utc, utcnow
from app.services.models import ANY_MODEL

BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600)
WINDOW = timedelta(days=30)
# Replicas get a new id per process and their rows are never deleted: one that stopped an hour ago
# (a rolling update, a scale-down) leaves the heartbeat gauge then, which bounds the series churn.
REPLICA_WINDOW = timedelta(hours=1)


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


class OperationsCollector(Collector):
    """Callback deliveries (the outbox) and serving replicas, for the operators' alerts."""

    def collect(self) -> Iterator[object]:
        ttl_s = get_settings().replica_ttl_s
        now = utcnow()
        try:
            with db.session_scope() as session:
                deliveries = session.exec(select(CallbackDelivery.kind, CallbackDelivery.status, func.count())
                                          .group_by(CallbackDelivery.kind, CallbackDelivery.status)).all()
                retrying = session.exec(select(CallbackDelivery.kind, func.count())
                                        .where(CallbackDelivery.status == "pending", CallbackDelivery.attempts > 0)
                                        .group_by(CallbackDelivery.kind)).all()
                replicas = session.exec(select(Replica).where(col(Replica.last_seen) >= now - REPLICA_WINDOW,
                                                              Replica.model_name != ANY_MODEL)).all()
                serving = dict(session.exec(select(Model.name, Model.serving_version)).all())
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blipped
            return
        g = GaugeMetricFamily("lethe_callback_deliveries", "Status callbacks in the outbox by kind and status "
                              "(pending, delivered, failed = given up, superseded)", labels=["kind", "status"])
        for kind, status, n in deliveries:
            g.add_metric([kind, status], n)
        yield g
        g = GaugeMetricFamily("lethe_callback_deliveries_retrying", "Pending callbacks whose last attempt failed",
                              labels=["kind"])
        for kind, n in retrying:
            g.add_metric([kind], n)
        yield g
        age = GaugeMetricFamily("lethe_replica_heartbeat_age_seconds", "Seconds since a serving replica's last "
                                "heartbeat (replicas seen in the last hour)", labels=["replica", "model"])
        behind = GaugeMetricFamily("lethe_replica_versions_behind", "Versions a live replica (heartbeat within "
                                   "replica_ttl_s) serves behind its model's serving version; an erasure waits "
                                   "for it", labels=["replica", "model"])
        for r in replicas:
            seconds = (now - as_utc(r.last_seen)).total_seconds()
            age.add_metric([r.replica_id, r.model_name], max(seconds, 0.0))
            target = serving.get(r.model_name)
            if seconds <= ttl_s and target is not None:
                behind.add_metric([r.replica_id, r.model_name], max(target - (r.version or 0), 0))
        yield age
        yield behind

    def describe(self) -> list:
        return []  # collected lazily: no DB access at registration


_registered = False


def register() -> None:
    global _registered
    if not _registered:
        from prometheus_client import REGISTRY

        REGISTRY.register(ErasureCollector())
        REGISTRY.register(OperationsCollector())
        _registered = True
