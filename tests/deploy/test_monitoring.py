"""deploy/prometheus/alerts.yml and deploy/grafana/lethe-dashboard.json use only metrics the app serves.

Each expression is parsed as PromQL (promql-parser: syntax and types), every ``lethe_*`` series it
selects is collected from the syntax tree, and each must be a family on the app's /metrics (a
histogram's ``_bucket`` / ``_sum`` / ``_count`` count as its family). Then the scenario of each
alert is made in the DB and the series that alert selects shows it.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import promql_parser
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from app.db.models import CallbackDelivery, ErasureRequest, Model, Replica, utcnow

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lethe-dashboard.json"
# Grafana's built-in interval variables are not PromQL: stand-ins for parsing.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
COUNTER_SUFFIXES = ("_total",)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]
    for var, value in GRAFANA_VARS.items():
        exprs = [e.replace(var, value) for e in exprs]
    return exprs


def selected_metrics(node: object) -> set[str]:
    """Names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql_parser.MatrixSelector):
        return selected_metrics(node.vector_selector)
    children: list[object] = []
    for attr in ("lhs", "rhs", "expr", "param"):
        children.append(getattr(node, attr, None))
    children.extend(getattr(node, "args", None) or [])
    return set().union(*(selected_metrics(c) for c in children if c is not None))


def used_metrics() -> dict[str, set[str]]:
    exprs = [r["expr"] for r in alert_rules()] + dashboard_exprs()
    return {e: {m for m in selected_metrics(promql_parser.parse(e)) if m.startswith("lethe_")} for e in exprs}


def served(client: TestClient) -> dict[str, str]:
    """Every series name /metrics can serve -> its family type (a counter's samples are ``_total``)."""
    names = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        names[family.name] = family.type
        suffixes = {"histogram": HISTOGRAM_SUFFIXES, "counter": COUNTER_SUFFIXES}.get(family.type, ())
        names.update({family.name + s: family.type for s in suffixes})
    return names


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {"LetheErasureOverdue", "LetheErasureFailed", "LetheReplicaStale",
                                          "LetheCallbackDeliveriesFailing", "LetheCallbackDeliveriesGivenUp",
                                          "LetheCallbackRefused"}
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], r["alert"]


def test_every_lethe_metric_in_alerts_and_dashboard_is_served(client: TestClient) -> None:
    names = served(client)
    used = used_metrics()
    assert all(used.values()), [e for e, m in used.items() if not m]  # each expression reads Lethe's series
    missing = {e: m - set(names) for e, m in used.items() if m - set(names)}
    assert not missing, f"not on /metrics: {missing}"


def test_the_alerts_scenarios_show_on_metrics(client: TestClient, session: Session, settings) -> None:  # noqa: ANN001
    now = utcnow()
    session.add(Model(name="m1", spec="toy", serving_version=3))
    session.flush()
    session.add_all([
        ErasureRequest(subject_key="overdue", status="queued", received_at=now - timedelta(days=40),
                       due_at=now - timedelta(days=9)),
        ErasureRequest(subject_key="failed", status="failed", due_at=now + timedelta(days=20)),
        Replica(replica_id="behind", model_name="m1", version=2, last_seen=now),
        Replica(replica_id="current", model_name="m1", version=3, last_seen=now),
        Replica(replica_id="left", model_name="m1", version=1,
                last_seen=now - timedelta(seconds=settings.replica_ttl_s + 60)),
        Replica(replica_id="gone", model_name="m1", version=1, last_seen=now - timedelta(hours=2)),
        CallbackDelivery(kind="native", request_id="r1", url="https://x.example/cb", body="{}", attempts=2),
        CallbackDelivery(kind="native", request_id="r2", url="https://x.example/cb", body="{}", attempts=0),
        CallbackDelivery(kind="opendsr", request_id="r3", url="https://x.example/cb", body="{}", status="failed",
                         attempts=12),
        CallbackDelivery(kind="recipient", request_id="r4", url="https://in.example/cb", body="{}", status="refused",
                         attempts=1),
    ])
    session.commit()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(client.get("/metrics").text) for s in f.samples}

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("lethe_open_erasure_requests", days_to_due="overdue") == 1  # LetheErasureOverdue
    assert value("lethe_erasure_requests", status="failed") == 1  # LetheErasureFailed
    # LetheReplicaStale: only live replicas count; one that left the live set is not "behind".
    assert value("lethe_replica_versions_behind", replica="behind", model="m1") == 1
    assert value("lethe_replica_versions_behind", replica="current", model="m1") == 0
    assert value("lethe_replica_versions_behind", replica="left", model="m1") is None
    assert value("lethe_replica_heartbeat_age_seconds", replica="left", model="m1") >= settings.replica_ttl_s + 60
    assert value("lethe_replica_heartbeat_age_seconds", replica="gone", model="m1") is None  # past the hour
    # LetheCallbackDeliveriesFailing / GivenUp.
    assert value("lethe_callback_deliveries_retrying", kind="native") == 1
    assert value("lethe_callback_deliveries", kind="native", status="pending") == 2
    assert value("lethe_callback_deliveries", kind="opendsr", status="failed") == 1
    assert value("lethe_callback_deliveries", kind="recipient", status="refused") == 1  # LetheCallbackRefused
