"""Prometheus metrics (issue 11 section 3). Three sources, each where its truth lives:

* counters kept in the DB (``MetricCounter``) for what the worker counts: the worker, not the
  scraped API process, completes requests, so ``lethe_time_to_forget_seconds`` is a real
  histogram whose buckets are incremented in the completion's own transaction (a subscriber,
  ``app/services/requests/subscribers.py``) and only read here — monotonic, so ``rate()`` works;
* gauges computed from the DB at scrape time (requests by status, queue depth, jobs, serving
  versions, replicas, the callback outbox) and counters tallied from the sequenced audit chain
  (gate failures, utility warnings): every API replica reports the same DB truth, so alert rules
  aggregate across scraped instances with ``max`` (deploy/prometheus/alerts.yml);
* in-process metrics of this API replica (HTTP requests and their latency, predict included),
  labelled by route template, never the raw path: paths carry subject IDs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, func, select

from app.core import db
from app.core.config import get_settings
from app.db.models import (AuditEvent, CallbackDelivery, ErasureRequest, ErasureTarget, FidesResume, MetricCounter,
                           Model, Replica, SourceErasure, UnlearningJob, as_utc, utcnow)
from app.ml.policy import METHODS
from app.services.integrations import fides_state
from app.services.requests.lifecycle import RequestStatus, TargetStatus
from app.services.models.catalog import ANY_MODEL

TIME_TO_FORGET = "lethe_time_to_forget_seconds"
# Receipt to every live replica serving a version free of the subject: seconds (a retrain on the
# demo models) to the one-month GDPR deadline. Fixed forever: a bucket added later starts at zero.
BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600, 30 * 24 * 3600)
WINDOW = timedelta(days=30)
QUANTILES = (0.5, 0.95, 0.99)
# Replicas get a new id per process and their rows are never deleted: one that stopped an hour ago
# (a rolling update, a scale-down) leaves the heartbeat gauge then, which bounds the series churn.
REPLICA_WINDOW = timedelta(hours=1)
EXACT = sorted(m for m, exact in METHODS.items() if exact)
access_log = logging.getLogger("lethe.http")


# ---------------------------------------------------------------- DB-kept counters (written by the worker)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else str(float(bound))


def increment(session: Session, name: str, deltas: dict[str, float]) -> None:
    """Add ``deltas`` ({series: amount}) to counter ``name`` in the caller's transaction: one
    upsert, rows in sorted order so concurrent completions queue on the row locks (PostgreSQL)
    or the write lock (SQLite) and never deadlock or lose an increment."""
    if not deltas:
        return
    dialect_insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(MetricCounter).values([{"name": name, "series": s, "value": float(v)}
                                                 for s, v in sorted(deltas.items())])
    session.execute(stmt.on_conflict_do_update(index_elements=["name", "series"],
                                               set_={"value": MetricCounter.value + stmt.excluded.value}))


def observe_time_to_forget(session: Session, seconds: float) -> None:
    """One completed request: its cumulative buckets, sum and count."""
    deltas = {f"bucket:{_le(b)}": 1.0 for b in (*BUCKETS, float("inf")) if seconds <= b}
    increment(session, TIME_TO_FORGET, {**deltas, "sum": seconds, "count": 1.0})


def read_histogram(session: Session, name: str) -> tuple[list[tuple[str, float]], float]:
    """(cumulative buckets incl. +Inf, sum) as stored; a bucket never incremented reads 0."""
    rows = dict(session.exec(select(MetricCounter.series, MetricCounter.value)
                             .where(MetricCounter.name == name)).all())
    buckets = [(_le(b), rows.get(f"bucket:{_le(b)}", 0.0)) for b in (*BUCKETS, float("inf"))]
    return buckets, rows.get("sum", 0.0)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile of the last 30 days' completions (the exact view beside the histogram)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# ---------------------------------------------------------------- audit-chain tallies


class AuditTally:
    """Gate failures and utility warnings counted from the audit chain, incrementally: events are
    read once, in ``seq`` order past the last one seen (the sequencer numbers them in commit
    order of the chain, so none is skipped). A chain shorter than what was seen (a restore)
    starts the tally over. Counts lag the sequencer by its interval (a few seconds)."""

    TYPES = ("unlearning_attempted", "utility_warning")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.seen, self.gate_failures, self.attempts, self.warnings = 0, Tally(), Tally(), Tally()

    def update(self, session: Session, *, batch: int = 5000) -> None:
        with self._lock:
            head = session.exec(select(func.max(AuditEvent.seq))).one() or 0
            if head < self.seen:
                self.reset()
            while self.seen < head:
                rows = session.exec(select(AuditEvent.seq, AuditEvent.type, AuditEvent.payload)
                                    .where(col(AuditEvent.seq) > self.seen, col(AuditEvent.seq) <= head,
                                           col(AuditEvent.type).in_(self.TYPES))
                                    .order_by(col(AuditEvent.seq)).limit(batch)).all()
                for _, kind, payload in rows:
                    self._count(kind, payload or {})
                self.seen = rows[-1][0] if len(rows) == batch else head

    def _count(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "utility_warning":
            self.warnings[str(payload.get("method") or "unknown")] += 1
            return
        method = str(payload.get("method") or "unknown")
        self.attempts[(method, "true" if payload.get("passed") else "false")] += 1
        for gate in payload.get("gates") or []:
            self.gate_failures[(str(gate), method)] += 1


# ---------------------------------------------------------------- scrape-time collectors


class ErasureCollector(Collector):
    def __init__(self) -> None:
        self.tally = AuditTally()

    def collect(self) -> Iterator[object]:
        try:
            with db.session_scope() as session:
                buckets, total = read_histogram(session, TIME_TO_FORGET)
                recent = session.exec(select(ErasureRequest.result).where(
                    ErasureRequest.status == RequestStatus.COMPLETED,
                    col(ErasureRequest.completed_at) >= utcnow() - WINDOW)).all()
                by_status = dict(session.exec(select(ErasureRequest.status, func.count())
                                              .group_by(ErasureRequest.status)).all())
                queued = session.exec(select(ErasureTarget.model_name, func.count(), func.min(ErasureTarget.queued_at))
                                      .where(ErasureTarget.status == TargetStatus.QUEUED)
                                      .group_by(ErasureTarget.model_name)).all()
                jobs = session.exec(select(UnlearningJob.method, UnlearningJob.status, func.count())
                                    .group_by(UnlearningJob.method, UnlearningJob.status)).all()
                # The chain stops at the first candidate that passes: an exact method served after
                # more than one attempt means every approximate candidate before it failed.
                fallbacks = session.exec(select(UnlearningJob.model_name, func.count())
                                         .where(UnlearningJob.status == "completed",
                                                col(UnlearningJob.method).in_(EXACT),
                                                func.json_array_length(UnlearningJob.attempts) > 1)
                                         .group_by(UnlearningJob.model_name)).all()
                self.tally.update(session)
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB blipped
            return
        h = HistogramMetricFamily(TIME_TO_FORGET, "Receipt to every live replica serving a version free of the "
                                  "subject, observed when each request completes")
        h.add_metric([], buckets, total)
        yield h
        values = [float(r["time_to_forget_s"]) for r in recent if r and "time_to_forget_s" in r]
        g = GaugeMetricFamily("lethe_time_to_forget_30d_seconds", "Time to forget of the requests completed in the "
                              "last 30 days (nearest-rank quantiles)", labels=["quantile"])
        for q in QUANTILES if values else ():
            g.add_metric([str(q)], quantile(values, q))
        yield g
        yield GaugeMetricFamily("lethe_completed_erasure_requests_30d", "Erasure requests completed in the last "
                                "30 days", value=len(values))
        g = GaugeMetricFamily("lethe_erasure_requests", "Erasure requests by status", labels=["status"])
        for status in RequestStatus:
            g.add_metric([status.value], by_status.get(status.value, 0))
        yield g
        g = GaugeMetricFamily("lethe_queued_erasure_targets", "Queue depth: (request, model) erasures waiting for "
                              "a job, retries in backoff included", labels=["model"])
        oldest = GaugeMetricFamily("lethe_oldest_queued_erasure_age_seconds", "Seconds the longest-waiting queued "
                                   "erasure of each model has been queued (retries keep their first queued_at)",
                                   labels=["model"])
        now = utcnow()
        for model, n, first in queued:
            g.add_metric([model], n)
            oldest.add_metric([model], max((now - as_utc(first)).total_seconds(), 0.0))
        yield g
        yield oldest
        g = GaugeMetricFamily("lethe_unlearning_jobs", "Unlearning jobs by served method (unknown until one "
                              "passes) and status", labels=["method", "status"])
        for method, status, n in jobs:
            g.add_metric([method or "unknown", status], n)
        yield g
        g = GaugeMetricFamily("lethe_exact_fallback_jobs", "Completed jobs served by an exact method (retrain, "
                              "sisa) after every approximate candidate failed verification", labels=["model"])
        for model, n in fallbacks:
            g.add_metric([model], n)
        yield g
        c = CounterMetricFamily("lethe_gate_failures", "Verification gates failed by unlearning candidates "
                                "(audited attempts)", labels=["gate", "method"])
        for (gate, method), n in sorted(self.tally.gate_failures.items()):
            c.add_metric([gate, method], n)
        yield c
        c = CounterMetricFamily("lethe_unlearning_attempts", "Unlearning candidates tried, by method and whether "
                                "they passed verification", labels=["method", "passed"])
        for (method, passed), n in sorted(self.tally.attempts.items()):
            c.add_metric([method, passed], n)
        yield c
        c = CounterMetricFamily("lethe_utility_warnings", "Served versions below the utility band (audited "
                                "utility_warning events)", labels=["method"])
        for method, n in sorted(self.tally.warnings.items()):
            c.add_metric([method], n)
        yield c

    def describe(self) -> list:
        return []  # collected lazily: no DB access at registration


class OperationsCollector(Collector):
    """Callback deliveries (the outbox), serving replicas and versions, for the operators' alerts."""

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
                fides = session.exec(select(FidesResume.state, func.count(), func.min(FidesResume.token_expires_at))
                                     .group_by(FidesResume.state)).all()
                sources = session.exec(select(SourceErasure.status, SourceErasure.reason, func.count())
                                       .group_by(SourceErasure.status, SourceErasure.reason)).all()
                sources_retrying = session.exec(select(func.count()).select_from(SourceErasure).where(
                    SourceErasure.status != "purged", SourceErasure.attempts > 0)).one()
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
        g = GaugeMetricFamily("lethe_fides_requests", "Halted Fides privacy requests by integration state (halted, "
                              "resuming, resumed, ended_in_fides, resume_refused, token_expired)", labels=["state"])
        soonest = GaugeMetricFamily("lethe_fides_token_expiry_seconds", "Seconds until the soonest reply-to-token "
                                    "of a Fides request Lethe still owes a resume expires (negative: expired)")
        owed = [as_utc(first) for state, _, first in fides if state in fides_state.OWING and first is not None]
        for state, n, _ in fides:
            g.add_metric([state], n)
        if owed:
            soonest.add_metric([], (min(owed) - now).total_seconds())
        yield g
        yield soonest
        g = GaugeMetricFamily("lethe_model_serving_version", "The version each model serves (every erasure "
                              "publishes a new one)", labels=["model"])
        for name, version in sorted(serving.items()):
            if version is not None:
                g.add_metric([name], version)
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
        g = GaugeMetricFamily("lethe_source_erasures", "Delta-store erasures in organisations' tables (issue 18) by "
                              "status (pending = DELETE owed, deleted = purge owed, purged) and reason (erasure, "
                              "reingested: a suppressed subject's rows found again)", labels=["status", "reason"])
        for status, reason, n in sources:
            g.add_metric([status, reason], n)
        yield g
        yield GaugeMetricFamily("lethe_source_erasures_retrying", "Owed Delta-store erasures whose last attempt "
                                "failed (table unreachable or refusing the commit)", value=sources_retrying)

    def describe(self) -> list:
        return []  # collected lazily: no DB access at registration


# ---------------------------------------------------------------- this replica's HTTP traffic

HTTP_REQUESTS = Counter("lethe_http_requests", "HTTP requests answered by this API replica",
                        ["method", "route", "code"])
HTTP_LATENCY = Histogram("lethe_http_request_duration_seconds", "Time to the response start, by route template "
                         "(predict included)", ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


class HttpMetrics:
    """ASGI middleware: counts, times and logs (the access log, ``lethe.http``) each request under its
    route template (``/v1/subjects/{subject_id}``, never the path itself); a request that matched no
    route counts as ``unmatched``. A mounted app (the console's static files) has no route template:
    it counts under its mount, ``/console/{path}``, so operators' ``unmatched`` stays what it says."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, code = time.perf_counter(), 500
        root = scope.get("root_path", "")

        def route_of() -> str:
            # The router updates this scope in place: a route match sets ``route``, a mount extends
            # ``root_path`` by its own path.
            if (path := getattr(scope.get("route"), "path", None)) is not None:
                return path
            mounted = scope.get("root_path", "")[len(root):]
            return f"{mounted}/{{path}}" if mounted else "unmatched"

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                route = route_of()
                HTTP_LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = route_of()
            HTTP_REQUESTS.labels(scope["method"], route, str(code)).inc()
            access_log.info("%s %s %s %.1f ms", scope["method"], route, code, (time.perf_counter() - start) * 1000)


_collectors: list[Collector] = []


def register() -> None:
    if not _collectors:
        from prometheus_client import REGISTRY

        _collectors.extend([ErasureCollector(), OperationsCollector()])
        for collector in _collectors:
            REGISTRY.register(collector)


def reset_tallies() -> None:
    """Forget the audit tallies (tests roll the chain back under a live collector)."""
    for collector in _collectors:
        if isinstance(collector, ErasureCollector):
            collector.tally.reset()
