"""Unlearning jobs, read-only: the methods tried, each with its verification report (evidence)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from app.api.schemas._base import Out


class AttemptOut(Out):
    """One method tried by the job (``workers/unlearning/engine.py``), in the order tried."""

    method: str
    exact: bool = Field(description="Exact methods (retrain, sisa) never trained on the forget set.")
    seed: int | None = Field(None, description="The fresh seed this attempt ran with (None on jobs recorded "
                                                "before seeds were drawn per job).")
    seconds: float = Field(description="Unlearning time, verification excluded.")
    verify_seconds: float | None = None
    budget_s: float | None = Field(None, description="An interim's approximate attempt: the seconds of the exact "
                                                     "cycle's budget it was given (None: unbounded).")
    passed: bool = Field(description="Whether the candidate passed every gate; only a passed one is served.")
    # Open JSON: the verification report (workers/verify/report.py) grows with the gates.
    report: dict[str, Any] = Field(description="Metrics, MIA AUC and band, gate decisions, loss histograms "
                                               "before / after.")


class JobPublic(Out):
    id: str
    model_name: str
    status: str = Field(description="running, deploying, completed or failed.")
    stage: str
    policy: str
    method: str | None = Field(description="The method whose candidate passed (or was tried last).")
    request_ids: list[str]
    attempts: list[AttemptOut] = Field(description="Each method tried, in order, with its verification report.")
    timings: dict[str, Any]
    version_before: int | None
    version_after: int | None
    device: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None
