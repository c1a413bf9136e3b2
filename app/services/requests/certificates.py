"""Erasure certificates: a signed JSON record that one erasure completed (DESIGN.md sections 1, 7).

The document is ``{"certificate": {...}, "signature": {"alg": "Ed25519", "key_id", "value"}}``;
``value`` is Ed25519 over the certificate as compact JSON with sorted keys (ASCII), so any
change of content breaks it. It names the request, the pseudonymous subject key, the times,
per model the versions before/after with their artifact sha256, the methods tried with
their verification reports (evidence, EDPB Opinion 28/2024) and the audit-chain event that
recorded the completion (its seq and hash: the chain head at that moment).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from sqlmodel import Session, col, select

from app.core.errors import Conflict
from app.core.signing import Keys, sign_ed25519, verify_ed25519
from app.db.models import AuditEvent, ModelVersion, utcnow
from app.services.integrations import callbacks, source_erasure
from app.services.requests import erasure, lifecycle

KIND = "lethe.erasure-certificate/v1"
DONE = lifecycle.ERASED


def canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _version(session: Session, model: str, number: int | None) -> dict[str, Any] | None:
    if number is None:
        return None
    v = session.exec(select(ModelVersion).where(ModelVersion.model_name == model,
                                                ModelVersion.number == number)).first()
    if v is None:
        return {"number": number, "sha256": None}
    return {"number": v.number, "sha256": v.sha256, "method": v.method, "state": v.state,
            "created_at": callbacks.rfc3339(v.created_at)}


def build(session: Session, *, request_id: str, keys: Keys, issuer: str) -> dict[str, Any]:
    """The signed certificate of a completed request; 409 while it is not completed."""
    req = erasure.get_request(session, request_id=request_id)
    if req.status not in DONE:
        raise Conflict(f"Request is {req.status}; a certificate exists only once it completed.",
                       code="not_completed")
    models = []
    for name, r in sorted((req.result or {}).get("models", {}).items()):
        attempts = r.get("attempts") or []
        models.append({"model": name, "job_id": r.get("job_id"), "method": r.get("method"),
                       "version_before": _version(session, name, r.get("version_before")),
                       "version_after": _version(session, name, r.get("version_after")),
                       "methods_tried": [a.get("method") for a in attempts],
                       "verification": [{"method": a.get("method"), "passed": a.get("passed"),
                                         "report": a.get("report")} for a in attempts],
                       # issue 19: each model registry's state for this erasure (owed, published, history kept)
                       **({"registries": r["registry"]} if r.get("registry") else {})})
    done_ev = session.exec(select(AuditEvent).where(AuditEvent.request_id == req.id,
                                                    AuditEvent.type == "erasure_completed")
                           .order_by(col(AuditEvent.seq).desc())).first()
    cert = {"kind": KIND, "issuer": issuer, "issued_at": callbacks.rfc3339(utcnow()), "request_id": req.id,
            "subject_key": req.subject_key, "source": req.source, "status": req.status,
            "received_at": callbacks.rfc3339(req.received_at), "due_at": callbacks.rfc3339(req.due_at),
            "completed_at": callbacks.rfc3339(req.completed_at), "models": models,
            "audit_chain_head": {"seq": done_ev.seq, "hash": done_ev.hash} if done_ev else None}
    if sources := source_erasure.certificate_entries(session, req.id):  # delta store (issue 18)
        cert["data_sources"] = sources
    cert = json.loads(json.dumps(cert, default=str, allow_nan=False))  # exactly what a verifier will parse
    return {"certificate": cert,
            "signature": {"alg": "Ed25519", "key_id": keys.key_id, "value": sign_ed25519(keys, canonical(cert))}}


def public_key(keys: Keys) -> dict[str, Any]:
    return {"alg": "Ed25519", "key_id": keys.key_id, "public_key_pem": keys.ed25519_public_pem,
            "public_key_raw_b64": base64.b64encode(keys.ed25519_public_raw).decode(),
            "generated": keys.generated}


def key_id_of(public_key_pem: str) -> str | None:
    try:
        pub = serialization.load_pem_public_key(public_key_pem.encode())
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    except (ValueError, TypeError):
        return None
    return hashlib.sha256(raw).hexdigest()[:16]


def verify_certificate(doc: Any, public_key_pem: str) -> tuple[bool, str]:
    if not isinstance(doc, dict) or not isinstance(doc.get("certificate"), dict) \
            or not isinstance(doc.get("signature"), dict):
        return False, "not a Lethe certificate (need 'certificate' and 'signature' objects)"
    sig = doc["signature"]
    if sig.get("alg") != "Ed25519" or not isinstance(sig.get("value"), str):
        return False, "unsupported or missing signature algorithm"
    if doc["certificate"].get("kind") != KIND:
        return False, f"unknown certificate kind {doc['certificate'].get('kind')!r}"
    if sig.get("key_id") != key_id_of(public_key_pem):
        return False, "signed by another key (key_id differs from this public key's)"
    if not verify_ed25519(public_key_pem, canonical(doc["certificate"]), sig["value"]):
        return False, "signature does not match the certificate content and this public key"
    return True, f"valid: request {doc['certificate'].get('request_id')} completed at " \
                 f"{doc['certificate'].get('completed_at')}"


def verify_certificate_file(path: str | Path, public_key_pem: str) -> tuple[bool, str]:
    """Check a certificate file against a PEM public key: (ok, reason)."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return False, f"cannot read certificate: {type(exc).__name__}"
    return verify_certificate(doc, public_key_pem)


# ---------------------------------------------------------------- CLI: lethe verify-certificate
