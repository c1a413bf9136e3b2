"""The web console's static files and the read endpoints it needs (the browser run is in
``test_console_e2e.py``)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from app.core.security import subject_key
from app.db.models import ErasureTarget, UnlearningJob
from app.api.console import CONSOLE_DIR
from app.main import create_app
from app.services.requests import erasure
from app.services.requests.lifecycle import OPEN, RequestStatus
from tests.conftest import make_key

PROBLEM = "application/problem+json"
SOURCES = {p.name: p.read_text() for p in CONSOLE_DIR.iterdir() if p.suffix in (".html", ".js", ".css")}
SVG_NS = "http://www.w3.org/2000/svg"  # a namespace name, never fetched


def test_console_and_every_asset_it_loads_are_served_by_lethe() -> None:
    client = TestClient(create_app(serve_models=False))
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert client.get("/console", follow_redirects=False).headers["location"].endswith("/console/")
    loaded = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    for source in SOURCES.values():
        loaded += re.findall(r'from "\./([\w.]+)"', source)
    assert {"main.js", "console.css", "api.js", "charts.js", "job.js", "requests.js"} <= set(loaded)
    for name in set(loaded) - {"data:,"}:
        assert not re.match(r"(https?:)?//", name), f"{name}: an asset from outside Lethe"
        r = client.get(f"/console/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].split(";")[0] in ("text/javascript", "text/css"), name
    for name, text in SOURCES.items():  # no CDN, no remote font, no analytics
        assert not re.findall(r"https?://", text.replace(SVG_NS, "")), name
    # ...and the browser is told so: only Lethe's own scripts, styles and API; nothing inline, no framing.
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp and "connect-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)", SOURCES["index.html"])  # no inline script (CSP forbids it)
    assert " style=" not in SOURCES["index.html"]


def test_console_never_puts_the_key_in_a_url_or_lasting_storage() -> None:
    js = {n: t for n, t in SOURCES.items() if n.endswith(".js")}
    for name, text in js.items():
        assert not re.search(r"[?&](key|api_key|apikey|token|access_token|authorization)=", text, re.I), name
        assert "localStorage" not in text and "document.cookie" not in text, name
        assert "location.search" not in text, name
        assert ("sessionStorage" in text) == (name == "api.js"), name  # one place holds the key
    # The key leaves the browser only as a header; queries are built from filters and cursors.
    api = js["api.js"]
    assert "headers.Authorization = `Bearer ${key}`" in api
    assert re.findall(r"withQuery\(([^)]*)\)", api) == ["path, params", "path, params"]
    # The login form posts (a form without JavaScript would otherwise GET the key into the URL).
    assert re.search(r'<form id="login-form" method="post"', SOURCES["index.html"])
    assert 'type="password"' in SOURCES["index.html"]


def test_console_statuses_are_the_lifecycle_ones() -> None:
    listed = re.search(r"export const STATUSES = \[([^\]]*)\]", SOURCES["requests.js"]).group(1)
    assert re.findall(r'"(\w+)"', listed) == [s.value for s in RequestStatus]
    open_ = re.search(r"export const OPEN = new Set\(\[([^\]]*)\]", SOURCES["ui.js"]).group(1)
    assert set(re.findall(r'"(\w+)"', open_)) == {s.value for s in OPEN}  # what can be overdue


def test_console_filter_choices_are_the_apis() -> None:
    from typing import get_args

    from app.api.routes.erasure_requests import Dialect, Source

    for name, expected in (("SOURCES", list(get_args(Source))), ("DIALECTS", [d.value for d in Dialect])):
        listed = re.search(rf"export const {name} = \[([^\]]*)\]", SOURCES["requests.js"]).group(1)
        assert re.findall(r'"(\w+)"', listed) == expected, name


def test_current_key_shows_name_and_scopes(client: TestClient, session: Session) -> None:
    key = make_key(session, ["erasure:read", "audit:read"], name="ops")
    r = client.get("/v1/keys/me", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["name"] == "ops"
    assert r.json()["scopes"] == ["audit:read", "erasure:read"] and "key" not in r.json()
    r = client.get("/v1/keys/me")
    assert r.status_code == 401 and r.headers["content-type"].startswith(PROBLEM)


def test_job_by_id_with_its_attempts(client: TestClient, session: Session, admin_headers: dict, toy_model) -> None:  # noqa: ANN001
    report = {"mia_auc": 0.71, "reference_auc": 0.5, "mia_margin": 0.05, "passed": False,
              "loss_hist": {"scale": "log10_loss", "edges": [-6.0, 0.0, 1.0], "before": {"forget": [3, 1]},
                            "after": {"forget": [1, 3]}}}
    job = UnlearningJob(model_name="toy", request_ids=["r1"], status="failed", policy="finetune", error="gates",
                        attempts=[{"method": "finetune", "exact": False, "seed": 0, "seconds": 0.1, "passed": False,
                                   "report": report}], timings={"unlearn_s": 0.1}, version_before=1)
    session.add(job)
    session.commit()
    r = client.get(f"/v1/jobs/{job.id}", headers=admin_headers)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "failed" and body["request_ids"] == ["r1"] and body["version_after"] is None
    assert body["attempts"][0]["report"]["loss_hist"]["after"]["forget"] == [1, 3]
    r = client.get("/v1/jobs/nope", headers=admin_headers)
    assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    predictor = {"Authorization": f"Bearer {make_key(session, ['predict'])}"}
    assert client.get(f"/v1/jobs/{job.id}", headers=predictor).json()["code"] == "insufficient_scope"


def test_request_list_filters_by_source(client: TestClient, session: Session, admin_headers: dict, settings) -> None:  # noqa: ANN001
    for subject, source in (("a", "api"), ("b", "fides"), ("c", "opendsr")):
        erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject), source=source)
    session.commit()
    items = client.get("/v1/erasure-requests", params={"source": "fides"}, headers=admin_headers).json()["items"]
    assert [i["source"] for i in items] == ["fides"]
    assert len(client.get("/v1/erasure-requests", headers=admin_headers).json()["items"]) == 3


def test_model_versions_say_which_completed_erasures_they_carry(client: TestClient, session: Session,
                                                                 admin_headers: dict, toy_model, settings) -> None:  # noqa: ANN001
    versions = client.get("/v1/models/toy", headers=admin_headers).json()["versions"]
    assert [(v["free_of_requests"], v["tainted_by_requests"]) for v in versions] == [(0, 0)]
    req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-02"))
    target = session.get(ErasureTarget, erasure.targets_of(session, req.id)[0].id)
    target.status = "done"  # as if a later version had completed it: v1 still carries the subject
    session.add(target)
    session.commit()
    versions = client.get("/v1/models/toy", headers=admin_headers).json()["versions"]
    assert versions[0]["tainted_by_requests"] == 1
    r = client.post("/v1/models/toy/rollback", json={"version": 1}, headers=admin_headers)
    assert r.status_code == 409 and r.json()["code"] == "tainted_version"  # the reason the console shows


def test_request_list_by_due_date_puts_open_overdue_requests_first_and_pages(
        client: TestClient, session: Session, admin_headers: dict, settings) -> None:  # noqa: ANN001
    from datetime import timedelta

    from app.db.models import ErasureRequest, utcnow

    now = utcnow()
    made = {}
    for name, due_days, status in (("late", -3, "queued"), ("soon", 5, "queued"), ("later", 20, "failed"),
                                   ("done", -40, "completed"), ("latest", 30, "awaiting_identity")):
        req, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, name))
        row = session.get(ErasureRequest, req.id)
        row.due_at, row.status = now + timedelta(days=due_days), status
        session.add(row)
        made[req.id] = name
    session.commit()
    order, cursor = [], None
    while True:  # pages of two
        params = {"order": "due", "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/erasure-requests", params=params, headers=admin_headers).json()
        order += [made[i["id"]] for i in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert order == ["late", "soon", "later", "latest", "done"]
    newest = client.get("/v1/erasure-requests", headers=admin_headers).json()["items"]
    assert [made[i["id"]] for i in newest] == ["latest", "done", "later", "soon", "late"]
    r = client.get("/v1/erasure-requests", params={"order": "oldest"}, headers=admin_headers)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM)
