"""Data registry per subject: ingest samples (refused once erased) and describe holdings."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas import IngestBody
from app.api.schemas.subjects import IngestOut, SubjectOut
from app.core.security import subject_key
from app.services.requests import subjects

router = APIRouter(prefix="/v1/subjects", tags=["subjects"])


@router.post("/{subject_id}/samples", status_code=201, response_model=IngestOut)
def ingest_samples(subject_id: str, body: IngestBody, session: SessionDep, settings: SettingsDep,
                   key: Annotated[Principal, Depends(require("admin"))]) -> dict[str, Any]:
    """Add training samples of a subject; 409 if the subject was erased."""
    n = subjects.ingest(session, subject_key=subject_key(settings.subject_key_secret, subject_id),
                        model_name=body.model, samples=[s.model_dump() for s in body.samples],
                        actor=f"key:{key.name}", root=settings.data_dir)
    session.commit()
    return {"model": body.model, "ingested": n}


@router.get("/{subject_id}", response_model=SubjectOut)
def get_subject(subject_id: str, session: SessionDep, settings: SettingsDep,
                _: Annotated[Principal, Depends(require("erasure:read"))]) -> dict[str, Any]:
    """What Lethe holds about a subject and which erasures it ran (GDPR Art. 15)."""
    info = subjects.describe(session, subject_key=subject_key(settings.subject_key_secret, subject_id))
    return subjects.require_known(info)
