"""Erasure certificates (signed JSON) and the public key that verifies them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas.certificates import PublicKeyOut, SignedCertificate
from app.core import db
from app.core.signing import get_keys
from app.db.models import utcnow
from app.services import audit
from app.services.requests import certificates, deadlines

router = APIRouter(tags=["certificates"])
# The open-requests-by-deadline gauge is read from the DB at scrape time (GET /metrics).
deadlines.install_metrics(lambda: db.new_session(), utcnow)


# exclude_unset: the certificate goes out with exactly the keys that were signed.
@router.get("/v1/erasure-requests/{request_id}/certificate", response_model=SignedCertificate,
            response_model_exclude_unset=True)
def get_certificate(request_id: str, session: SessionDep, settings: SettingsDep,
                    _: Annotated[Principal, Depends(require("erasure:read"))]) -> dict[str, Any]:
    """Ed25519-signed certificate of a completed erasure; 409 until it completed."""
    audit.sync(session)  # the completion event must be chained before the head is quoted
    return certificates.build(session, request_id=request_id, keys=get_keys(settings), issuer=settings.base_url)


@router.get("/v1/keys/certificate", response_model=PublicKeyOut)
def certificate_key(settings: SettingsDep) -> dict[str, Any]:
    """The Ed25519 public key (PEM and raw base64) that verifies certificates and audit checkpoints."""
    return certificates.public_key(get_keys(settings))
