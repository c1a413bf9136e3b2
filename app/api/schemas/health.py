"""Liveness and readiness."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.api.schemas._base import Out


class Health(Out):
    status: Literal["ok"]


class Ready(Out):
    status: Literal["ready"]
    replica_id: str
    models: dict[str, int] = Field(description="The version of each model this replica serves.")
