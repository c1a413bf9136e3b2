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
