"""Liveness, readiness (every model loaded at its serving version) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.schemas.health import Health, Ready
from app.core.errors import Unavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Ready)
def readyz(request: Request) -> dict[str, Any]:
    """Ready only when this replica serves the current version of every model."""
    listener = request.app.state.listener
    if listener is None or not listener.ready():
        raise Unavailable("Not serving the current model versions yet.", code="not_ready")
    return {"status": "ready", "replica_id": listener.replica_id, "models": request.app.state.holder.versions()}


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text exposition format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
