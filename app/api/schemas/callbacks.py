"""One request's outbound deliveries (``GET /v1/erasure-requests/{id}/callbacks``, ``callbacks.deliveries``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.api.schemas._base import Out


class CallbackOut(Out):
    id: int
    kind: Literal["native", "opendsr", "recipient", "fides"] = Field(
        description="native callback_url, OpenDSR status callback, Art. 19 recipient notice, Fides resume.")
    host: str | None = Field(description="The target's host (never the full URL: it may carry a token).")
    status: Literal["pending", "delivered", "failed", "superseded", "refused"] = Field(
        description="refused: the outbound guard found the target inside the network (never retried).")
    attempts: int
    last_error: str | None = Field(description="Why the last attempt failed, e.g. HTTP 500, ConnectError, or "
                                               "'refused: ...' with the guard's reason.")
    created_at: datetime
    delivered_at: datetime | None


class CallbackList(Out):
    items: list[CallbackOut]
