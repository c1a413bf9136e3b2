"""Unlearning jobs, read-only: the methods tried, each with its verification report (evidence)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.api.deps import SessionDep, require
from app.db.models import ApiKey
from app.services import jobs

router = APIRouter(prefix="/v1/jobs", tags=["erasure"])
Reader = Annotated[ApiKey, Depends(require("erasure:read"))]


class JobPublic(BaseModel):
    id: str
    model_name: str
    status: str = Field(description="running, deploying, completed or failed.")
    stage: str
    policy: str
    method: str | None = Field(description="The method whose candidate passed (or was tried last).")
    request_ids: list[str]
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


@router.get("/{job_id}")
def get_job(job_id: str, session: SessionDep, _: Reader) -> JobPublic:
    """One unlearning job: its requests, the methods tried and why each candidate passed or failed."""
    return JobPublic.model_validate(jobs.get_job(session, job_id=job_id), from_attributes=True)
