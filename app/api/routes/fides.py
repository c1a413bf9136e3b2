"""Fides policy webhook: halt a privacy request while Lethe unlearns, resume it when done."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas.fides import FidesAnswer
from app.core.queue import enqueue_unlearn
from app.core.ratelimit import check_intake
from app.services.integrations import fides
from app.services.requests import erasure

router = APIRouter(prefix="/integrations/fides", tags=["integrations"])


class FidesWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")  # Fides adds fields between versions
    privacy_request_id: str = Field(min_length=1, max_length=200)
    direction: Literal["one_way", "two_way"]
    callback_type: Literal["pre", "post"]
    identity: dict[str, Any] | None = None
    identities: dict[str, Any] | None = None  # older Fides name


@router.post("/webhook", response_model=FidesAnswer, response_model_exclude_unset=True)
def fides_webhook(body: FidesWebhook, session: SessionDep, settings: SettingsDep,
                  key: Annotated[Principal, Depends(require("erasure:write"))],
                  reply_to: Annotated[str | None, Header(alias="reply-to")] = None,
                  reply_to_token: Annotated[str | None, Header(alias="reply-to-token")] = None) -> dict[str, Any]:
    """Pre-execution policy webhook: record the erasure; two-way answers halt until it completes."""
    check_intake(key.id, rate=settings.intake_rate_per_s, burst=settings.intake_burst)
    answer, req = fides.handle_webhook(
        session, privacy_request_id=body.privacy_request_id, direction=body.direction,
        callback_type=body.callback_type, identity=body.identity or body.identities or {}, reply_to=reply_to,
        token=reply_to_token, settings=settings, actor=f"key:{key.name}")
    models = erasure.models_to_enqueue(session, req.id) if req is not None else []
    session.commit()
    for name in models:
        enqueue_unlearn(name)
    return answer
