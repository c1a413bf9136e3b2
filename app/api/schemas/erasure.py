"""Erasure requests: the status document (``erasure.public_view``) and its list page."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.api.schemas._base import NEXT_CURSOR, Out
from app.services.lifecycle import RequestStatus, TargetStatus


class TargetOut(Out):
    """The request's part on one model that held the subject."""

    model: str
    status: TargetStatus
    job_id: str | None = Field(description="The unlearning job that took this part, while one has it.")
    attempts: int = Field(description="Jobs that took this part and failed.")
    not_before: datetime | None = Field(description="After a failed attempt: no retry before this time.")


class ErasureRequestOut(Out):
    id: str
    status: RequestStatus
    stage: str = Field(description="What the job is doing now, e.g. unlearning, verifying, deploying.")
    percent: float
    subject_key: str = Field(description="HMAC of the subject ID; the ID itself is never stored.")
    source: str = Field(description="Where it came from: api, opendsr or fides.")
    policy: str = Field(description="auto or a method name.")
    received_at: datetime
    due_at: datetime = Field(description="GDPR Art. 12(3) deadline (paused identity checks added).")
    completed_at: datetime | None
    forgotten_at: datetime | None = Field(description="Scheduled erasures (issue 16): when every live replica "
                                                      "served the interim version (not free of the subject).")
    exact_due_at: datetime | None = Field(description="When the exact version must serve everywhere.")
    extended: bool = Field(description="The deadline was extended by two months (Art. 12(3)).")
    identity: Literal["verified", "pending", "rejected"] = Field(description="Art. 12(6) identity check.")
    clock_paused: bool = Field(description="The deadline clock is paused while identity is pending.")
    clock_paused_s: float = Field(description="How long the clock stood still, in seconds.")
    extension_reason: str | None
    status_url: str
    models: list[TargetOut] = Field(description="One entry per model that held the subject.")
    # Written by the worker per model: versions before/after, methods tried with their verification
    # reports, timings; its keys differ by method, so it stays open JSON.
    result: dict[str, Any] | None = Field(description="When done: per model the versions before and after, "
                                                      "the method chain and its verification reports.")
    error: str | None


class ErasureRequestPage(Out):
    items: list[ErasureRequestOut]
    next_cursor: str | None = Field(description=NEXT_CURSOR)
