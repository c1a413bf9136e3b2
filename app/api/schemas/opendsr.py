"""OpenDSR family bodies (repository opengdpr/OpenDSR), with the spec's exact field names.

These routes answer a pre-signed ``Response`` (the ``X-*-Signature`` header signs the exact bytes),
which FastAPI passes through unvalidated: the models document the bodies in OpenAPI, and the
schemathesis fuzz checks the bodies sent against them. Optional keys are left out, never null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.api.schemas._base import Out, absent
from app.api.schemas.subjects import SubjectOut

SIGNATURE = "Base64 RSA-SHA256 signature over this body without this field (compact JSON, sorted keys)."


class SupportedIdentity(Out):
    identity_type: str
    identity_format: Literal["raw"]


class Discovery(Out):
    """Spec section 6."""

    api_version: str
    supported_identities: list[SupportedIdentity]
    supported_subject_request_types: list[Literal["erasure", "access"]]
    processor_certificate: str = Field(description="URL of the X.509 certificate (PEM) that verifies signatures.")


class ServiceStatus(Out):
    api_version: str
    status: Literal["ok"]


class CreateReceipt(Out):
    """Spec section 7.3."""

    controller_id: str
    expected_completion_time: datetime
    received_time: datetime
    encoded_request: str = Field(description="Base64 of the request body as received.")
    subject_request_id: str
    processor_signature: str = Field(description=SIGNATURE)


class OpenGdprRequestStatus(Out):
    """Spec section 8.3 (OpenGDPR v0.1: no ``results_count``)."""

    controller_id: str
    expected_completion_time: datetime
    subject_request_id: str
    request_status: Literal["pending", "in_progress", "completed", "cancelled"]
    api_version: str
    results_url: str = absent("Once completed: the erasure certificate, or an access request's results.")


class RequestStatusOut(OpenGdprRequestStatus):
    """Spec section 8.3."""

    results_count: int = absent("Once an access request completed: the live rows held about the subject.")


class CancelReceipt(Out):
    """Spec section 9.2."""

    controller_id: str
    received_time: datetime
    subject_request_id: str
    api_version: str
    processor_signature: str = Field(description=SIGNATURE)


class OpenGdprCancelReceipt(CancelReceipt):
    """OpenGDPR v0.1 also echoes ``encoded_request`` (of the DELETE body, usually empty)."""

    encoded_request: str


class AccessResults(SubjectOut):
    """The ``results_url`` of an access request: what Lethe holds about the subject, read live."""

    subject_request_id: str
