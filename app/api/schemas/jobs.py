"""Unlearning jobs, read-only: the methods tried, each with its verification report (evidence)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from app.api.schemas._base import Out


class JobPublic(Out):
    id: str
    model_name: str
    status: str = Field(description="running, deploying, completed or failed.")
    stage: str
    policy: str
    method: str | None = Field(description="The method whose candidate passed (or was tried last).")
    request_ids: list[str]
    # Open JSON: each method tried, in order, with its verification report (workers/verify/report.py).
    attempts: list[dict[str, Any]] = Field(
        description="Each method tried, in order: method, exact, seed, seconds, passed and its verification "
                    "report (metrics, MIA AUC and band, gate decisions, loss histograms before / after).")
    timings: dict[str, Any]
    version_before: int | None
    version_after: int | None
    device: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
