"""Unlearning jobs, read-only: the methods tried, each with its verification report (evidence)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from app.api.deps import Principal, SessionDep, require
from app.api.schemas.jobs import JobPublic
from app.services.models import jobs

router = APIRouter(prefix="/v1/jobs", tags=["erasure"])
Reader = Annotated[Principal, Depends(require("erasure:read"))]


@router.get("/{job_id}")
def get_job(job_id: str, session: SessionDep, _: Reader) -> JobPublic:
    """One unlearning job: its requests, the methods tried and why each candidate passed or failed."""
    return JobPublic.model_validate(jobs.get_job(session, job_id=job_id), from_attributes=True)
