"""Subjects: what Lethe holds about one (GDPR Art. 15) and ingest receipts."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from app.api.schemas._base import Out
from app.services.requests.lifecycle import RequestStatus


class IngestOut(Out):
    model: str
    ingested: int


class SubjectErasure(Out):
    id: str
    status: RequestStatus
    received_at: datetime
    completed_at: datetime | None


class SubjectOut(Out):
    subject_key: str = Field(description="HMAC of the subject ID; the ID itself is never stored.")
    suppressed: bool = Field(description="Erased: new samples of this subject are refused.")
    samples: dict[str, dict[str, int]] = Field(description="Live rows per model and split.")
    pending_erasure: dict[str, dict[str, int]] = Field(
        description="Rows withdrawn from every use, kept until the erasure completes, per model and split.")
    held_by: list[str] = Field(description="Models that still hold the subject.")
    erasure_requests: list[SubjectErasure] = Field(description="Oldest first.")
