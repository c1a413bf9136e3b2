"""Models: list, describe (versions, replicas, input schema), predict, rollback."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import HolderDep, ListenerDep, Principal, SessionDep, SettingsDep, require
from app.api.schemas import PredictBody, RecipientsBody, RollbackBody
from app.api.schemas.models import ModelDetail, ModelList, PredictOut, RecipientsOut, RollbackOut
from app.core import outbound
from app.core.errors import NotFound, Unavailable, Unprocessable
from app.ml.train import predict as run_predict
from app.services.models import compute
from app.services.models import catalog as model_service

router = APIRouter(prefix="/v1/models", tags=["models"])
Predictor = Annotated[Principal, Depends(require("predict"))]
Admin = Annotated[Principal, Depends(require("admin"))]


@router.get("", response_model=ModelList)
def list_models(session: SessionDep, _: Predictor) -> dict[str, Any]:
    """Registered models and the version each serves."""
    return {"items": [{"name": m.name, "description": m.description, "serving_version": m.serving_version}
                      for m in model_service.list_models(session)]}


@router.get("/{name}", response_model=ModelDetail)
def get_model(name: str, session: SessionDep, settings: SettingsDep, _: Predictor) -> dict[str, Any]:
    """One model: input schema with an example, live replicas, version history, metrics and compute per erasure."""
    return {**model_service.describe(session, name=name, ttl_s=settings.replica_ttl_s),
            "compute": compute.per_erasure(session, name=name)}


@router.post("/{name}/predict", response_model=PredictOut)
async def predict(name: str, body: PredictBody, holder: HolderDep, listener: ListenerDep, response: Response,
                  _: Predictor) -> dict[str, Any]:
    """Predictions from the version this replica serves (also in the X-Model-Version header)."""
    loaded = holder.get(name)  # one snapshot for the whole call: a swap cannot split it
    if loaded is None and name not in listener.expected:
        raise NotFound(f"No model named {name!r}.")
    if loaded is None or not listener.fresh():
        raise Unavailable("This replica has no current version of the model loaded yet.", code="model_not_ready",
                          headers={"Retry-After": "1"})
    features = []
    for i, item in enumerate(body.inputs):
        try:
            features.append(loaded.spec.validate_input(item))
        except (ValueError, TypeError) as exc:
            raise Unprocessable(f"inputs[{i}]: {exc}", code="invalid_input") from exc
    preds = await run_in_threadpool(run_predict, loaded.spec, loaded.model, loaded.meta, features, device="cpu")
    response.headers["X-Model-Version"] = str(loaded.version)
    return {"model": name, "model_version": loaded.version,
            "predictions": [{"label": int(label), "probability": round(float(p), 6)} for label, p in preds]}


@router.post("/{name}/rollback", response_model=RollbackOut)
def rollback(name: str, body: RollbackBody, session: SessionDep, key: Admin) -> dict[str, Any]:
    """Serve an earlier version again; refused (409) if it carries any completed erasure."""
    version = model_service.rollback(session, name=name, number=body.version, actor=f"key:{key.name}")
    session.commit()
    return {"model": name, "serving_version": version.number}


@router.put("/{name}/recipients", response_model=RecipientsOut)
def set_recipients(name: str, body: RecipientsBody, session: SessionDep, settings: SettingsDep, key: Admin) -> dict[str, Any]:
    """Record who received this model (GDPR Art. 19); each completed erasure notifies them."""
    recipients = [r.model_dump(mode="json") for r in body.recipients]
    for r in recipients:
        if r["callback_url"]:
            outbound.check_at_door(r["callback_url"], settings)  # 422 callback_url_refused
    model_service.set_recipients(session, name=name, recipients=recipients, actor=f"key:{key.name}")
    session.commit()
    return {"model": name, "recipients": recipients}
