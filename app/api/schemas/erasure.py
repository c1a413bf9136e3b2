"""Erasure requests: the status document (``erasure.public_view``) and its list page."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.api.schemas._base import NEXT_CURSOR, Out
from app.services.requests.lifecycle import RequestStatus, TargetStatus


class TargetOut(Out):
    """The request's part on one model that held the subject."""

    model: str
    status: TargetStatus
    job_id: str | None = Field(description="The unlearning job that took this part, while one has it.")
    attempts: int = Field(description="Jobs that took this part and failed.")
    not_before: datetime | None = Field(description="After a failed attempt: no retry before this time.")


class FidesStateOut(Out):
    """A Fides request's integration state (app/services/integrations/fides_state.py; README "Fides")."""

    privacy_request_id: str | None = Field(description="Fides' privacy_request_id.")
    state: Literal["not_halted", "halted", "resuming", "resumed", "ended_in_fides", "resume_refused",
                   "token_expired"] = Field(
        description="not_halted: Fides was not held (one_way, or nothing to erase); halted: Fides waits for "
        "Lethe's resume; resuming: the resume is being delivered; resumed: Fides went on; ended_in_fides: Fides "
        "had cancelled, denied or failed the request first; resume_refused: Fides refused the resume (retried); "
        "token_expired: Fides' reply-to-token expired, Fides keeps the request paused (act in Fides).")
    token_expires_at: datetime | None = Field(description="When Fides stops accepting the resume.")
    fides_status: str | None = Field(description="Fides' status of the request when it refused a resume as no "
                                                 "longer paused (complete, canceled, error, ...).")
    detail: str | None = Field(description="Fides' last refusal, or why the token was dropped.")
    next_step: str | None = Field(description="What an operator does now, if anything.")


class ErasureRequestOut(Out):
    id: str
    status: RequestStatus
    stage: str = Field(description="What the job is doing now, e.g. unlearning, verifying, deploying.")
    percent: float
    subject_key: str = Field(description="HMAC of the subject ID; the ID itself is never stored.")
    source: str = Field(description="Where it came from: api, opendsr or fides.")
    external_id: str | None = Field(None, description="The caller's id of the request: Fides' privacy_request_id, "
                                                      "OpenDSR's subject_request_id.")
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
    fides: FidesStateOut | None = Field(None, description="Fides requests: the integration's state.")


class ErasureRequestPage(Out):
    items: list[ErasureRequestOut]
    next_cursor: str | None = Field(description=NEXT_CURSOR)
