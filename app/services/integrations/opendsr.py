"""OpenDSR family (repository opengdpr/OpenDSR): one service, three dialects.

- ``opengdpr``: OpenGDPR v0.1.x (``OpenGDPR_specification.md``), ``X-OpenGDPR-*`` headers;
- ``opendsr``: the v2 name (``X-OpenDSR-*``, ``regulation`` required);
- ``opencompliance``: OpenCompliance v1.0 (``specification.md``), ``X-OpenCompliance-*``;
  section 10.1 says the older names MUST still be honoured, hence all three.

Erasure goes through ``erasure.create_request`` (source ``opendsr``, external id = the
controller's ``subject_request_id``); access is answered from the data registry
(``subjects.describe``). Identities: Lethe knows a subject only as
``HMAC(secret, subject_id)``, so only ``raw`` identities of the configured types can be
matched; hashed formats (sha256, md5, sha1) of an ID cannot be turned into that key and
are refused. Errors use the spec's error object (7.6) and never echo identity values.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, func, select

from app.core import outbound
from app.core.config import Settings
from app.core.errors import LetheError
from app.core.security import subject_key
from app.core.signing import Keys, processor_domain, sign_rsa
from app.db.models import ErasureRequest, OpenDsrRequest, Sample, utcnow
from app.services import audit
from app.services.integrations import callbacks
from app.services.requests import erasure, subjects

REQUEST_TYPES = ("erasure", "access")  # portability: no export format for model training rows yet
HASHED_FORMATS = ("sha256", "sha1", "md5")


@dataclass(frozen=True)
class Dialect:
    name: str
    header: str  # header prefix
    api_version: str
    base: str  # path prefix of discovery/status
    collection: str  # the requests resource
    regulation_required: bool

    @property
    def requests_path(self) -> str:
        return f"{self.base}/{self.collection}"


DIALECTS = {
    "opengdpr": Dialect("opengdpr", "X-OpenGDPR", "0.1", "/opendsr/v1", "opengdpr_requests", False),
    "opendsr": Dialect("opendsr", "X-OpenDSR", "2.0", "/opendsr/v2", "requests", True),
    "opencompliance": Dialect("opencompliance", "X-OpenCompliance", "1.0", "/opendsr", "opencompliance_requests",
                              True),
}
CERT_PATH = "/opendsr/cert.pem"


class OpenDsrError(LetheError):
    """Rendered as the spec's error object ``{"error": {code, message, errors[]}}`` by the OpenDSR routes."""

    status, code, title = 400, "opendsr_invalid", "Invalid OpenDSR request"

    def __init__(self, message: str, *, reason: str, status: int = 400, domain: str = "Validation",
                 errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, code=reason,
                         errors=errors or [{"domain": domain, "reason": reason, "message": message}])
        self.status = status


class Identity(BaseModel):
    identity_type: str = Field(min_length=1, max_length=64)
    identity_value: str = Field(min_length=1, max_length=512)
    identity_format: str = Field(min_length=1, max_length=16)


class SubjectRequestIn(BaseModel):
    model_config = ConfigDict(extra="ignore")  # forward compatible: unknown top-level fields are ignored
    regulation: Literal["gdpr", "ccpa"] | None = None
    subject_request_id: str = Field(min_length=36, max_length=36)
    subject_request_type: str = Field(min_length=1, max_length=32)
    submitted_time: AwareDatetime
    subject_identities: list[Identity] = Field(default_factory=list, max_length=50)
    api_version: str | None = Field(None, max_length=16)
    status_callback_urls: list[HttpUrl] = Field(default_factory=list, max_length=10)
    extensions: dict[str, Any] | None = None


def _validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    # loc + message only: pydantic's "input" may hold an identity value.
    return [{"domain": "Validation", "reason": e["type"],
             "message": f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"} for e in exc.errors()]


def parse(dialect: Dialect, raw: bytes) -> SubjectRequestIn:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise OpenDsrError("The body is not valid JSON.", reason="InvalidJson") from None
    if not isinstance(data, dict):
        raise OpenDsrError("The body must be a JSON object.", reason="InvalidJson")
    try:
        body = SubjectRequestIn.model_validate(data)
    except ValidationError as exc:
        errors = _validation_errors(exc)
        raise OpenDsrError(errors[0]["message"], reason="ValidationError", errors=errors) from None
    try:
        parsed = uuid.UUID(body.subject_request_id)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != body.subject_request_id:
        raise OpenDsrError("subject_request_id must be a lowercase UUID v4.", reason="IllegalArgumentException")
    if dialect.regulation_required and body.regulation is None:
        raise OpenDsrError("regulation field is required ('gdpr' or 'ccpa').", reason="IllegalArgumentException")
    if body.subject_request_type not in REQUEST_TYPES:
        raise OpenDsrError(f"subject_request_type {body.subject_request_type!r} is not supported; supported: "
                           f"{list(REQUEST_TYPES)}.", reason="UnsupportedRequestType")
    return body


def check_callback_urls(body: SubjectRequestIn, settings: Settings) -> None:
    """The outbound guard's submission-time check, answered in the spec's error object (422)."""
    for i, url in enumerate(body.status_callback_urls):
        try:
            outbound.check_at_door(str(url), settings)
        except outbound.Refused as exc:
            raise OpenDsrError(f"status_callback_urls.{i}: {exc.detail}", reason=exc.code, status=422) from None


def identity_types(settings: Settings) -> list[str]:
    return [t.strip() for t in settings.opendsr_identity_types.split(",") if t.strip()]


def pick_subject_id(body: SubjectRequestIn, settings: Settings) -> str:
    """The one raw identity of a supported type; other identities are ignored (controllers send all they have)."""
    types = identity_types(settings)
    values = {i.identity_value for i in body.subject_identities
              if i.identity_type in types and i.identity_format == "raw"}
    if len(values) == 1:
        return values.pop()
    if len(values) > 1:
        raise OpenDsrError("More than one distinct identity of a supported type; send one subject per request.",
                           reason="AmbiguousIdentity")
    if any(i.identity_type in types and i.identity_format in HASHED_FORMATS for i in body.subject_identities):
        raise OpenDsrError("Hashed identities cannot be matched: Lethe keeps only keyed pseudonyms of subject IDs; "
                           f"send identity_format 'raw' for {types}.", reason="UnsupportedIdentityFormat")
    supported = [{"identity_type": t, "identity_format": "raw"} for t in types]
    raise OpenDsrError(f"No supported identity; supported: {supported}.", reason="UnsupportedIdentity")


# ---------------------------------------------------------------- operations


def discovery(dialect: Dialect, settings: Settings) -> dict[str, Any]:
    return {"api_version": dialect.api_version,
            "supported_identities": [{"identity_type": t, "identity_format": "raw"} for t in identity_types(settings)],
            "supported_subject_request_types": list(REQUEST_TYPES),
            "processor_certificate": f"{settings.base_url}{CERT_PATH}"}


def service_status(dialect: Dialect) -> dict[str, Any]:
    return {"api_version": dialect.api_version, "status": "ok"}


def create(session: Session, *, dialect: Dialect, raw: bytes, controller_id: str, actor: str,
           settings: Settings) -> tuple[OpenDsrRequest, list[str]]:
    """Record a subject request. Returns the row and the models to enqueue after commit."""
    body = parse(dialect, raw)
    check_callback_urls(body, settings)
    if session.get(OpenDsrRequest, body.subject_request_id) is not None:
        raise OpenDsrError("A request with this subject_request_id already exists.", reason="DuplicateRequest",
                           status=409, domain="Request")
    key = subject_key(settings.subject_key_secret, pick_subject_id(body, settings))
    now = utcnow()
    row = OpenDsrRequest(subject_request_id=body.subject_request_id, dialect=dialect.name,
                         subject_request_type=body.subject_request_type, regulation=body.regulation or "gdpr",
                         controller_id=controller_id, subject_key=key, api_version=body.api_version,
                         submitted_time=body.submitted_time, received_time=now,
                         expected_completion_time=erasure.add_one_month(now),
                         status_callback_urls=[str(u) for u in body.status_callback_urls])
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # a concurrent duplicate won the race
        session.rollback()
        raise OpenDsrError("A request with this subject_request_id already exists.", reason="DuplicateRequest",
                           status=409, domain="Request") from None
    if row.subject_request_type == "access":
        audit.append(session, type="access_requested", actor=actor, subject_key=key,
                     payload={"subject_request_id": row.subject_request_id, "dialect": dialect.name})
        row.expected_completion_time = now
        callbacks.announce_opendsr(session, row, request_id=row.subject_request_id, request_status="completed",
                                   expected=now, results_url=results_url(row, settings))
        return row, []
    req, _ = erasure.create_request(session, subject_key=key, reason=f"{row.regulation} subject request "
                                    f"({dialect.name})", policy=settings.default_policy, api_key_id=controller_id,
                                    source="opendsr", external_id=row.subject_request_id, actor=actor,
                                    idempotency_key=f"opendsr:{row.subject_request_id}")
    row.erasure_request_id, row.received_time, row.expected_completion_time = req.id, req.received_at, req.due_at
    session.add(row)
    return row, erasure.models_to_enqueue(session, req.id)


def get(session: Session, *, subject_request_id: str, controller_id: str, admin: bool) -> OpenDsrRequest:
    row = session.get(OpenDsrRequest, subject_request_id)
    if row is None or (row.controller_id != controller_id and not admin):
        raise OpenDsrError("No request with this subject_request_id.", reason="NotFound", status=404,
                           domain="Request")
    return row


def cancel(session: Session, *, row: OpenDsrRequest, actor: str) -> None:
    """Section 9: only while ``pending`` (Lethe: queued, no job started yet)."""
    if row.erasure_request_id is None:
        raise OpenDsrError("Only a pending erasure request can be cancelled.", reason="NotCancellable", status=409,
                           domain="Request")
    erasure.cancel_request(session, request_id=row.erasure_request_id, actor=actor)


def request_status(session: Session, row: OpenDsrRequest) -> tuple[str, ErasureRequest | None]:
    if row.erasure_request_id is None:
        return "completed", None
    req = session.get(ErasureRequest, row.erasure_request_id)
    return callbacks.REQUEST_STATUS.get(req.status, "in_progress"), req


def results_url(row: OpenDsrRequest, settings: Settings) -> str:
    if row.erasure_request_id:
        return callbacks.certificate_url(settings.base_url, row.erasure_request_id)
    return f"{settings.base_url}{DIALECTS[row.dialect].requests_path}/{row.subject_request_id}/results"


def status_view(session: Session, row: OpenDsrRequest, *, dialect: Dialect, settings: Settings) -> dict[str, Any]:
    """Section 8.3 body."""
    status, _ = request_status(session, row)
    body: dict[str, Any] = {"controller_id": row.controller_id,
                            "expected_completion_time": callbacks.rfc3339(row.expected_completion_time),
                            "subject_request_id": row.subject_request_id, "request_status": status,
                            "api_version": dialect.api_version}
    if status == "completed":
        body["results_url"] = results_url(row, settings)
        if row.erasure_request_id is None and dialect.name != "opengdpr":  # results_count is not in v0.1
            body["results_count"] = held_count(session, row.subject_key)
    return body


def held_count(session: Session, key: str) -> int:
    return session.exec(select(func.count()).select_from(Sample).where(Sample.subject_key == key,
                                                                       Sample.deleted == False)).one()  # noqa: E712


def access_results(session: Session, *, row: OpenDsrRequest) -> dict[str, Any]:
    """What Lethe holds about the subject of an access request, read live from the registry (Art. 15)."""
    if row.subject_request_type != "access":
        raise OpenDsrError("Results are served for access requests; an erasure has a certificate.",
                           reason="NotAccessRequest", status=404, domain="Request")
    info = subjects.describe(session, subject_key=row.subject_key)
    return {"subject_request_id": row.subject_request_id, **info}


def create_response(row: OpenDsrRequest, *, raw: bytes) -> dict[str, Any]:
    """Section 7.3 body (``processor_signature`` is added by ``sign``)."""
    return {"controller_id": row.controller_id,
            "expected_completion_time": callbacks.rfc3339(row.expected_completion_time),
            "received_time": callbacks.rfc3339(row.received_time), "encoded_request": base64.b64encode(raw).decode(),
            "subject_request_id": row.subject_request_id}


def cancel_response(row: OpenDsrRequest, *, dialect: Dialect, received: datetime, raw: bytes) -> dict[str, Any]:
    """Section 9.2 body; v0.1 also echoes ``encoded_request`` (of the DELETE body, usually empty)."""
    body = {"controller_id": row.controller_id, "received_time": callbacks.rfc3339(received),
            "subject_request_id": row.subject_request_id, "api_version": dialect.api_version}
    if dialect.name == "opengdpr":
        body["encoded_request"] = base64.b64encode(raw).decode()
    return body


def sign(body: dict[str, Any], *, dialect: Dialect, keys: Keys, settings: Settings,
         processor_signature: bool) -> tuple[bytes, dict[str, str]]:
    """Serialise and sign a response: ``processor_signature`` = RSA-SHA256 over the body without that field
    (compact JSON, sorted keys); the ``X-*-Signature`` header = RSA-SHA256 over the exact bytes sent."""
    if processor_signature:
        body = {**body, "processor_signature": sign_rsa(keys, callbacks.dumps(body).encode())}
    raw = callbacks.dumps(body).encode()
    return raw, {f"{dialect.header}-Processor-Domain": processor_domain(settings),
                 f"{dialect.header}-Signature": sign_rsa(keys, raw)}
