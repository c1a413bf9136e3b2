"""create_app(): routers, one error-handler install, and the replica's model listener."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from app.api.console import ConsoleFiles
from app.api.routes import (audit, certificates, erasure_requests, fides, health, jobs, keys, model_admin, models,
                            opendsr, subjects)
from app.core.config import get_settings
from app.core.db import create_schema, get_engine, session_scope
from app.core.errors import PROBLEM_RESPONSES, install_error_handlers
from app.core.logging import configure_logging
from app.ml.device import set_cpu_threads
from app.serving.holder import ModelHolder, UpdateListener
from app.services import audit as audit_log
from app.services import metrics
from app.services.requests.subscribers import install_subscribers
from app.services.models import compute


log = logging.getLogger("lethe.app")


class Periodic:
    """A daemon thread that calls ``fn`` every ``interval_s``; errors are logged and retried."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._fn, self._interval = fn, interval_s
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception:  # noqa: BLE001 - a DB blip must not kill the thread
                log.warning("%s failed; will retry", self._thread.name, exc_info=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _sequence_audit() -> None:
    with session_scope() as session:
        audit_log.sync(session)


def create_app(*, serve_models: bool = True) -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level)
    install_subscribers()  # the API's transitions write their callbacks' outbox rows (lifecycle)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        create_schema()
        set_cpu_threads(settings.torch_threads)
        sequencer = Periodic("lethe-audit-sequencer", settings.audit_sequence_interval_s, _sequence_audit)
        sequencer.start()
        if serve_models:
            app.state.listener = UpdateListener(app.state.holder, settings, get_engine())
            app.state.listener.start()
        yield
        sequencer.stop()
        if app.state.listener is not None:
            app.state.listener.stop()

    app = FastAPI(title="Lethe", version="0.1.0", lifespan=lifespan, responses=PROBLEM_RESPONSES,
                  description="Machine unlearning for the GDPR right to be forgotten (Art. 17).")
    metrics.register()
    compute.register()  # issue 16: compute per erasure, time to interim, erasures at risk
    app.add_middleware(metrics.HttpMetrics)
    app.state.holder = ModelHolder()
    app.state.listener = None
    install_error_handlers(app)
    for module in (fides, erasure_requests, jobs, certificates, model_admin, models, subjects, audit, keys, health,
                   opendsr):
        app.include_router(module.router)
    # The web console: static files that call the API above with the operator's key (README).
    app.mount("/console", ConsoleFiles(), name="console")
    return app


app = create_app()
