"""Models, administered: register on a running stack (a job with progress), per-model policy."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas import ModelRegister, PolicyBody
from app.api.schemas.models import (BulkIngestOut, ExactNowOut, PolicyOut, PublishStatusOut, RegistrationOut,
                                    SpecList)
from app.core.errors import Unprocessable
from app.core.queue import enqueue_registration, enqueue_unlearn
from app.ml.specs import spec_names
from app.services.models import catalog as model_service
from app.services.integrations import publishing
from app.services.models import registration
from app.services.models import schedule as schedule_service
from app.services.models.bulk import BulkIngest

router = APIRouter(prefix="/v1/models", tags=["models"])
Admin = Annotated[Principal, Depends(require("admin"))]
Predictor = Annotated[Principal, Depends(require("predict"))]


@router.post("", status_code=202, response_model=RegistrationOut)
def register_model(body: ModelRegister, session: SessionDep, settings: SettingsDep, key: Admin) -> dict[str, Any]:
    """Register a model of an installed spec: data, version 1 (trained or adopted), reference; 202 + status URL."""
    weights = None
    if body.weights_base64 is not None:
        try:
            weights = base64.b64decode(body.weights_base64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise Unprocessable("weights_base64 is not valid base64.", code="invalid_weights") from exc
    reg = registration.open_registration(session, name=body.name, spec=body.spec, config=body.config, weights=weights,
                                         uploads_dir=settings.data_dir / "uploads", actor=f"key:{key.name}",
                                         weights_uri=body.weights_uri)
    view = registration.view(reg, settings.base_url)
    session.commit()
    enqueue_registration(reg.id)  # only after commit
    return view


@router.get("/registrations/{registration_id}", response_model=RegistrationOut)
def get_registration(registration_id: str, session: SessionDep, settings: SettingsDep, _: Admin) -> dict[str, Any]:
    """A registration job: status (queued, running, completed, failed), stage, percent, error."""
    return registration.view(registration.get_registration(session, registration_id), settings.base_url)


@router.get("/specs/installed", response_model=SpecList)
def installed_specs(_: Predictor) -> dict[str, Any]:
    """Spec entry points installed on this replica."""
    return {"items": list(spec_names())}


@router.get("/{name}/policy", response_model=PolicyOut)
def get_policy(name: str, session: SessionDep, _: Predictor) -> dict[str, Any]:
    """The unlearning policy `auto` runs for this model: chain and method overrides, with their source."""
    return model_service.policy_of(session, name=name)


@router.put("/{name}/policy", response_model=PolicyOut)
def set_policy(name: str, body: PolicyBody, session: SessionDep, key: Admin) -> dict[str, Any]:
    """Set this model's chain, method overrides and publish targets (validated; a chain ends exact)."""
    out = model_service.set_policy(session, name=name, changes=body.model_dump(exclude_unset=True),
                                   actor=f"key:{key.name}")
    session.commit()
    return out


@router.get("/{name}/publish", response_model=PublishStatusOut)
def publish_status(name: str, session: SessionDep, _: Admin) -> dict[str, Any]:
    """Publish targets: the last registry sync (clean version, alias, purged versions) and what is owed."""
    return {"model": name, "targets": publishing.status(session, name=name)}


@router.post("/{name}/exact-now", status_code=202, response_model=ExactNowOut)
def exact_now(name: str, session: SessionDep, key: Admin) -> dict[str, Any]:
    """Start the exact job for every owed (scheduled) erasure of this model now, whatever its schedule."""
    out = schedule_service.request_exact_now(session, name=name, actor=f"key:{key.name}")
    session.commit()
    enqueue_unlearn(name, dedup_s=0)
    return out


NDJSON_BODY = {"requestBody": {"required": True, "content": {"application/x-ndjson": {
    "schema": {"type": "string", "format": "binary"},
    "example": '{"subject_id": "u1", "features": {"x": [0.0]}, "label": 0, "split": "train"}\n'}}}}
LINES_PER_CHUNK = 5000


@router.post("/{name}/samples", status_code=201, response_model=BulkIngestOut, openapi_extra=NDJSON_BODY)
async def bulk_ingest(name: str, request: Request, session: SessionDep, settings: SettingsDep,
                      key: Admin) -> dict[str, Any]:
    """Bulk ingest (JSON Lines, streamed): one sample per line, all or nothing; suppressed subjects refused."""
    bulk = await run_in_threadpool(BulkIngest, session, model_name=name, secret=settings.subject_key_secret,
                                   root=settings.data_dir, actor=f"key:{key.name}")
    tail, lines = b"", []
    try:
        async for chunk in request.stream():
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            lines += parts
            if len(lines) >= LINES_PER_CHUNK:
                await run_in_threadpool(bulk.feed, lines)
                lines = []
        await run_in_threadpool(bulk.feed, [*lines, tail])
        summary = await run_in_threadpool(bulk.finish)
        await run_in_threadpool(session.commit)
    except BaseException:
        await run_in_threadpool(bulk.abort)
        raise
    return summary
