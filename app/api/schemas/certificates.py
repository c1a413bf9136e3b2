"""Erasure certificates (``certificates.build``) and the key that verifies them.

The certificate is signed over its canonical JSON: every field here passes its value through as it
is (times stay the strings the service formatted, reports stay open JSON, no int becomes a float),
and the route excludes unset fields, so the document a client verifies is the one that was signed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from app.api.schemas._base import Out, Rfc3339, absent


class CertVersion(Out):
    number: int
    sha256: str | None = Field(description="Null only if the version row is gone.")
    method: str = absent("Absent when the version row is gone.")
    state: str = absent("Absent when the version row is gone.")
    created_at: Rfc3339 = absent("Absent when the version row is gone.")


class CertVerification(Out):
    method: str | None
    passed: bool | None
    # Open JSON: the verification report (MIA test, utility gates) of that attempt; it differs by test.
    report: dict[str, Any] | None


class CertModel(Out):
    model: str
    job_id: str | None
    method: str | None = Field(description="The method whose version is served.")
    version_before: CertVersion | None
    version_after: CertVersion | None
    methods_tried: list[str | None]
    verification: list[CertVerification] = Field(description="Evidence per attempt (EDPB Opinion 28/2024).")
    # Open JSON, as the request's result.models.<model>.registry: per publish target (issue 19).
    registries: dict[str, Any] = absent("Each model registry's state for this erasure; absent without targets.")


class CertDataSource(Out):
    """The organisation's Delta table (issue 18): when the person was deleted there and purged."""
    model: str
    table: str
    status: str
    absent_after_version: int | None
    deleted_at: str | None
    purged_at: str | None
    purge_due_by: str


class ChainPosition(Out):
    seq: int
    hash: str


class Certificate(Out):
    kind: Literal["lethe.erasure-certificate/v1"]
    issuer: str
    issued_at: Rfc3339
    request_id: str
    subject_key: str
    source: str
    status: str
    received_at: Rfc3339
    due_at: Rfc3339
    completed_at: Rfc3339 | None
    models: list[CertModel]
    audit_chain_head: ChainPosition | None = Field(description="The audit event that recorded the completion.")
    data_sources: list[CertDataSource] = absent("Delta-store tables that held the person; absent for other stores.")


class Signature(Out):
    alg: Literal["Ed25519"]
    key_id: str
    value: str = Field(description="Base64 Ed25519 signature over the certificate as compact, sorted-key JSON.")


class SignedCertificate(Out):
    certificate: Certificate
    signature: Signature


class PublicKeyOut(Out):
    alg: Literal["Ed25519"]
    key_id: str
    public_key_pem: str
    public_key_raw_b64: str
    generated: bool = Field(description="A key generated on first start (embedded default), not a configured one.")
