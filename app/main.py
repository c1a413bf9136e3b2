"""create_app(): routers, one error-handler install, and the replica's model listener."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api.routes import audit, certificates, erasure_requests, health, keys, models, opendsr, subjects
from app.core.config import get_settings
from app.core.db import create_schema, get_engine
from app.core.errors import install_error_handlers
from app.core.logging import configure_logging
from app.ml.device import set_cpu_threads
from app.serving.holder import ModelHolder, UpdateListener
from app.services import metrics


def create_app(*, serve_models: bool = True) -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        create_schema()
        set_cpu_threads(settings.torch_threads)
        if serve_models:
            app.state.listener = UpdateListener(app.state.holder, settings, get_engine())
            app.state.listener.start()
        yield
        if app.state.listener is not None:
            app.state.listener.stop()

    app = FastAPI(title="Lethe", version="0.1.0", lifespan=lifespan,
                  description="Machine unlearning for the GDPR right to be forgotten (Art. 17).")
    metrics.register()
    app.state.holder = ModelHolder()
    app.state.listener = None
    install_error_handlers(app)
    for module in (erasure_requests, certificates, models, subjects, audit, keys, health, opendsr):
        app.include_router(module.router)
    return app


app = create_app()
