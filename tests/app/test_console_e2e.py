"""The web console end to end in headless Chromium (Debian's ``chromium``, driven by Playwright).

A real app on a free port (uvicorn in a thread) over a fresh SQLite database; the toy model is
registered and a real unlearning job fails its gates (one finetune step leaves the forget set
remembered, and the exact fallback is taken out of the chain), so the request ends ``failed``
with a real verification report. In the browser: log in with an operator key, find the request,
open its job page and see the loss plot, retry the request; an admin is refused a rollback to
a version that carries a completed erasure; a read-only key is refused a cancel with the API's 403. Screenshots go to ``tests/artifacts/console/``; the key never appears in a
URL the browser requested nor in the server's log.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "console"
CHROMIUM = os.environ.get("LETHE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OPERATOR = ["erasure:read", "erasure:write", "audit:read", "predict"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"headless Chromium not found at {CHROMIUM}: apt-get install chromium "
                                       "(.ci/run does) or set LETHE_CHROMIUM")


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """A fresh data dir and SQLite DB for the whole app, a failed request, and the app serving."""
    import torch
    import uvicorn

    import workers.unlearning.engine as engine
    from app.core import db
    from app.core.config import get_settings
    from app.core.signing import get_keys
    from app.core.security import subject_key
    from app.main import create_app
    from app.services import audit
    from app.services.access import keys
    from app.services.requests import erasure
    from app.services.models import catalog as model_service
    from app.services.models import registration
    from workers import pipeline

    port = _free_port()
    monkeypatch.setenv("LETHE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LETHE_PORT", str(port))
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    settings = get_settings()
    db.create_schema()
    with db.new_session() as session:
        _, operator = keys.create_key(session, name="operator", scopes=OPERATOR)
        _, reader = keys.create_key(session, name="reader", scopes=["erasure:read"])
        _, admin = keys.create_key(session, name="admin", scopes=["admin"])
        registration.register_demo_model(session, name="toy", secret=settings.subject_key_secret,
                                         artifacts_dir=settings.artifacts_dir, device="cpu")
        # A first erasure completes (v2 serves; v1 carries it, so it is purged and may never serve again).
        erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-07"))
        session.commit()
    worker = pipeline.Worker(settings=settings.model_copy(update={"max_request_attempts": 1, "deploy_timeout_s": 1}),
                             engine=None, device=torch.device("cpu"), sleep=lambda s: None)
    assert len(pipeline.drain(worker, "toy")) == 1
    with db.new_session() as session:
        model_service.set_policy(session, name="toy", changes={"methods": {"finetune": {"steps": 1}}}, actor="test")
        # Two subjects in one job: 20 forget samples, enough for the set-level MIA test.
        failed, _ = erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-02"),
                                           policy="finetune")
        erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, "toy-03"),
                               policy="finetune")
        session.commit()
        failed_id = failed.id
    monkeypatch.setattr(engine, "method_chain", lambda *a, **kw: ["finetune"])
    [job_id] = pipeline.drain(worker, "toy")
    with db.new_session() as session:
        assert erasure.get_request(session, request_id=failed_id).status == "failed"
        # Two more for the list: one queued, one waiting for its identity check.
        for subject, verified in (("toy-04", True), ("toy-07", False)):
            erasure.create_request(session, subject_key=subject_key(settings.subject_key_secret, subject),
                                   identity_verified=verified)
        session.commit()

    with db.new_session() as session:  # a signed checkpoint for the audit page
        audit.sync(session)
        audit.write_checkpoint(session, keys=get_keys(settings), path=audit.checkpoint_path(settings))
        session.commit()

    config = uvicorn.Config(create_app(serve_models=False), host="127.0.0.1", port=port, log_level="info",
                            access_log=True)  # configures uvicorn's loggers (access: no propagation)
    captured = Captured()
    loggers = [logging.getLogger(name) for name in ("", "uvicorn.access", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(captured)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "operator": operator, "reader": reader, "admin": admin, "failed": failed_id,
               "job": job_id, "log": captured}
    finally:
        server.should_exit = True
        thread.join(10)
        for logger in loggers:
            logger.removeHandler(captured)
        db.get_engine().dispose()
        monkeypatch.undo()
        get_settings.cache_clear()
        db.get_engine.cache_clear()


def _login(page, url: str, key: str) -> None:
    page.goto(f"{url}/console/")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#who-name:has-text('')", state="attached")


def test_console_login_find_request_job_plot_and_retry(live: dict) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url, rid = live["url"], live["failed"]
    requested: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requested.append(r.url))
        errors: list[str] = []  # script errors and CSP violations (reported on the console)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "status of 40" not in msg.text
                else None)
        try:
            page.goto(f"{url}/console/")
            expect(page.locator("#login")).to_be_visible()
            page.fill("#key", live["operator"])
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text("operator")
            expect(page.locator("#who-scopes")).to_contain_text("erasure:write")

            # Find the failed request in the list (filtered by status).
            page.select_option("#f-status", "failed")
            row = page.locator(f"tr[data-request='{rid}']")
            expect(row).to_be_visible()
            expect(page.locator("#requests tbody tr")).to_have_count(2)
            page.select_option("#f-status", "")
            expect(page.locator("#requests tbody tr")).to_have_count(5)
            page.screenshot(path=str(ARTIFACTS / "requests.png"), full_page=True)

            # Its detail page and timeline from the audit chain.
            page.locator(f"tr[data-request='{rid}'] a").click()
            expect(page.locator("main h1")).to_contain_text("failed")
            expect(page.locator("#timeline")).to_contain_text("erasure failed")

            # Its job page: the loss plot, the AUC band, the accuracy bars and the gates in words.
            page.locator("a.job-link").first.click()
            expect(page.locator("main h1")).to_contain_text("Unlearning job")
            attempt = page.locator(".attempt[data-method='finetune']")
            expect(attempt).to_be_visible()
            expect(attempt.locator("svg.loss-chart path.series-forget")).to_have_count(2)  # before and after
            expect(attempt.locator("svg.loss-chart path.series-holdout")).to_have_count(2)
            expect(attempt.locator("svg.auc-band .band")).to_have_count(1)
            expect(attempt.locator("svg.acc-bars rect.bar-candidate")).to_have_count(3)
            expect(attempt.locator("ul.gates li.fail")).not_to_have_count(0)
            expect(attempt).to_contain_text("Membership inference")
            d = attempt.locator("svg.loss-chart path.series-forget").first.get_attribute("d")
            assert d.count("L") > 20  # a real step curve of the stored bins, not an empty path
            attempt.screenshot(path=str(ARTIFACTS / "job-attempt.png"))
            page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)

            # Retry the failed request from its page: the API's answer is shown.
            page.go_back()
            expect(page.locator("#act-retry")).to_be_visible()
            page.click("#act-retry")
            expect(page.locator(".actions .result")).to_contain_text("status queued")
            expect(page.locator("main h1 .badge")).to_have_text("queued")
            page.screenshot(path=str(ARTIFACTS / "request-retried.png"), full_page=True)

            # Models and audit pages render from the API.
            page.click("#nav a[data-section='audit']")
            expect(page.locator("#chain-status")).to_contain_text("verifies")
            expect(page.locator("main")).to_contain_text("valid (Ed25519)")
            with page.expect_download() as download:
                page.click("#export-jsonl")
            assert Path(download.value.path()).read_text().count("\n") >= 10  # the chain's events, one a line
            page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)

            # An admin sees the versions and is refused a rollback to the version carrying an erasure.
            page.click("#logout")
            page.fill("#key", live["admin"])
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text("admin")
            page.click("#nav a[data-section='models']")
            page.locator("#models a", has_text="toy").click()
            v1 = page.locator("#versions tr", has_text="completed erasure")
            expect(v1).to_contain_text("v1")
            expect(page.locator("#versions tr.current")).to_contain_text("v2")
            v1.locator("button[data-rollback='1']").click()
            expect(v1.locator(".problem")).to_contain_text("409")
            page.screenshot(path=str(ARTIFACTS / "model.png"), full_page=True)

            # The console enforces scopes exactly as the API does: a read-only key's cancel is a 403.
            page.click("#logout")
            page.fill("#key", live["reader"])
            page.click("#login-form button[type=submit]")
            expect(page.locator("#who-name")).to_have_text("reader")
            page.goto(f"{url}/console/#/requests/{rid}")
            page.click("#act-cancel")
            expect(page.locator(".actions .result")).to_contain_text("403")
            expect(page.locator(".actions .result")).to_contain_text("erasure:write")
            page.click("#nav a[data-section='audit']")
            expect(page.locator("#view > .problem")).to_contain_text("audit:read")  # the page's own refusal
            expect(page.locator("#view .actions")).to_have_count(0)  # and nothing of the request page left
        finally:
            page.screenshot(path=str(ARTIFACTS / "last.png"), full_page=True)
            browser.close()

    assert errors == []
    for key in (live["operator"], live["reader"], live["admin"]):
        assert not [u for u in requested if key in u], "an API key appeared in a URL"
        assert not [line for line in live["log"].lines if key in line], "an API key appeared in the server log"
    assert any("/v1/jobs/" in u for u in requested)
    # The log check saw the traffic: uvicorn's access log (full paths and queries) and Lethe's.
    assert any("GET /v1/erasure-requests?" in line for line in live["log"].lines)
    assert any("/v1/jobs/{job_id}" in line for line in live["log"].lines)
