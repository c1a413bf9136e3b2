"""OpenDSR family under ``/opendsr``: OpenGDPR v1, OpenDSR v2 and OpenCompliance, one service.

Errors on these routes render as the spec's error object (section 7.6), not problem+json:
``SpecErrorRoute`` converts Lethe's domain errors (and the auth dependency's) raised here.
Discovery, status and the certificate are public (callers authenticate callbacks with
them, spec 8.8); creating, reading and cancelling requests need an API key.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import Principal, SessionDep, SettingsDep, require
from app.api.schemas import opendsr as dsr_schema
from app.core.errors import HTTP_ERROR_CODES, LetheError, database_unavailable
from app.core.queue import enqueue_unlearn
from app.core.ratelimit import check_intake
from app.core.signing import get_keys
from app.db.models import utcnow
from app.services.integrations import opendsr
from app.services.integrations.opendsr import CERT_PATH, DIALECTS, REQUEST_TYPES, Dialect, SubjectRequestIn

Writer = Annotated[Principal, Depends(require("erasure:write"))]
Reader = Annotated[Principal, Depends(require("erasure:read"))]
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def spec_error(status: int, message: str, errors: list[dict[str, Any]] | None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "errors": errors or []}}, status_code=status,
                        headers={**NO_STORE, **(headers or {})})


SPEC_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message", "errors"],
        "properties": {"code": {"type": "integer", "description": "The HTTP status."},
                       "message": {"type": "string"},
                       "errors": {"type": "array", "items": {
                           "type": "object", "properties": {"domain": {"type": "string"},
                                                            "reason": {"type": "string"},
                                                            "message": {"type": "string"}}}}}}},
}
# Replaces the app-wide problem+json "4XX" in these routes' OpenAPI documentation.
SPEC_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "Client error (the spec's error object, section 7.6)",
            "content": {"application/json": {"schema": SPEC_ERROR_SCHEMA}}},
}


class SpecErrorRoute(APIRoute):
    """The error handler of the OpenDSR routes only (the rest of the API keeps problem+json)."""

    @staticmethod
    def render_http_error(exc: StarletteHTTPException) -> Response:
        """The router's own errors on these paths (405), for the app-wide HTTP error handler."""
        reason = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        return spec_error(exc.status_code, str(exc.detail),
                          [{"domain": "Request", "reason": reason, "message": str(exc.detail)}], exc.headers)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except LetheError as exc:
                errors = exc.errors if isinstance(exc, opendsr.OpenDsrError) else [
                    {"domain": "Request", "reason": exc.code, "message": exc.detail}]
                return spec_error(exc.status, exc.detail, errors, exc.headers)
            except DBAPIError as exc:
                if (err := database_unavailable(exc)) is None:
                    raise
                return spec_error(err.status, err.detail, [{"domain": "Service", "reason": err.code,
                                                            "message": err.detail}], err.headers)
            except RequestValidationError as exc:
                errors = [{"domain": "Validation", "reason": e.get("type", ""),
                           "message": f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', '')}"}
                          for e in exc.errors()]
                return spec_error(400, "The request failed validation.", errors)

        return handle


async def raw_body(request: Request) -> bytes:
    return await request.body()


RawBody = Annotated[bytes, Depends(raw_body)]


def signed(body: dict[str, Any], d: Dialect, settings: Any, status: int = 200, *, processor_signature: bool = False,
           headers: dict[str, str] | None = None) -> Response:
    raw, sig_headers = opendsr.sign(body, dialect=d, keys=get_keys(settings), settings=settings,
                                    processor_signature=processor_signature)
    return Response(raw, status_code=status, media_type="application/json", headers={**sig_headers, **(headers or {})})


UUID4 = "^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if (ref := node.get("$ref", "")).startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items()}
    return [_inline(v, defs) for v in node] if isinstance(node, list) else node


def create_body_schema(d: Dialect) -> dict[str, Any]:
    """The create body for OpenAPI (the route reads it raw, to echo and sign it): ``SubjectRequestIn``
    plus what ``opendsr.parse`` checks after it (a lowercase UUID v4, a supported type, ``regulation``
    where the dialect requires it)."""
    schema = SubjectRequestIn.model_json_schema()
    schema = _inline(schema, schema.pop("$defs", {}))
    props = schema["properties"]
    props["subject_request_id"]["pattern"] = UUID4
    props["subject_request_type"] = {"type": "string", "enum": list(REQUEST_TYPES)}
    if d.regulation_required:
        props["regulation"] = {"type": "string", "enum": ["gdpr", "ccpa"]}
        schema["required"] = [*schema["required"], "regulation"]
    example = {"subject_request_id": "7f3c2a4e-9b1d-4c8e-a2f5-0d6b8e1c3a97", "subject_request_type": "erasure",
               "submitted_time": "2026-01-01T00:00:00Z", "regulation": "gdpr",
               "subject_identities": [{"identity_type": "controller_customer_id",  # the default identity type
                                       "identity_value": "customer-1", "identity_format": "raw"}]}
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema, "example": example}}}}


def _admin(key: Principal) -> bool:
    return "admin" in key.scopes


def dialect_router(d: Dialect, *, base: str | None = None, meta: bool = True) -> APIRouter:
    router = APIRouter(prefix=base or d.base, tags=["opendsr"], route_class=SpecErrorRoute,
                       responses=SPEC_ERROR_RESPONSES)
    n = f"{d.name}{'' if base is None else '_alias'}"
    # The routes answer pre-signed Responses, which FastAPI sends as they are: response_model only
    # documents each body (v0.1 names differ a little); the schemathesis fuzz checks the bodies.
    v01 = d.name == "opengdpr"

    if meta:
        @router.get("/discovery", operation_id=f"{n}_discovery", response_model=dsr_schema.Discovery)
        def discovery(settings: SettingsDep) -> Response:
            """Spec section 6: API version, supported identities and request types, certificate URL."""
            return signed(opendsr.discovery(d, settings), d, settings)

        @router.get("/status", operation_id=f"{n}_status", response_model=dsr_schema.ServiceStatus)
        def service_status(settings: SettingsDep) -> Response:
            """The service is up (spec section 3.1 lists the endpoint without a body; Lethe answers this)."""
            return signed(opendsr.service_status(d), d, settings)

    @router.post(f"/{d.collection}", status_code=201, operation_id=f"{n}_create",
                 response_model=dsr_schema.CreateReceipt, openapi_extra=create_body_schema(d))
    def create(raw: RawBody, session: SessionDep, settings: SettingsDep, key: Writer) -> Response:
        """Spec section 7: accept an erasure or access request; 201 with a signed receipt."""
        check_intake(key.id, rate=settings.intake_rate_per_s, burst=settings.intake_burst)
        row, to_enqueue = opendsr.create(session, dialect=d, raw=raw, controller_id=key.id,
                                         actor=f"key:{key.name}", settings=settings)
        session.commit()
        for model_name in to_enqueue:  # only after commit (STYLE.md principle 5)
            enqueue_unlearn(model_name)
        return signed(opendsr.create_response(row, raw=raw), d, settings, 201, processor_signature=True)

    @router.get(f"/{d.collection}/{{subject_request_id}}", operation_id=f"{n}_get",
                response_model=dsr_schema.OpenGdprRequestStatus if v01 else dsr_schema.RequestStatusOut)
    def get_request(subject_request_id: str, session: SessionDep, settings: SettingsDep, key: Reader) -> Response:
        """Spec section 8: request status (pending, in_progress, completed, cancelled)."""
        row = opendsr.get(session, subject_request_id=subject_request_id, controller_id=key.id, admin=_admin(key))
        return signed(opendsr.status_view(session, row, dialect=d, settings=settings), d, settings)

    @router.delete(f"/{d.collection}/{{subject_request_id}}", status_code=202, operation_id=f"{n}_cancel",
                   response_model=dsr_schema.OpenGdprCancelReceipt if v01 else dsr_schema.CancelReceipt)
    def cancel(subject_request_id: str, raw: RawBody, session: SessionDep, settings: SettingsDep,
               key: Writer) -> Response:
        """Spec section 9: cancel while pending; 202 with a signed receipt."""
        row = opendsr.get(session, subject_request_id=subject_request_id, controller_id=key.id, admin=_admin(key))
        opendsr.cancel(session, row=row, actor=f"key:{key.name}")
        session.commit()
        body = opendsr.cancel_response(row, dialect=d, received=utcnow(), raw=raw)
        return signed(body, d, settings, 202, processor_signature=True)

    @router.get(f"/{d.collection}/{{subject_request_id}}/results", operation_id=f"{n}_results",
                response_model=dsr_schema.AccessResults)
    def access_results(subject_request_id: str, session: SessionDep, settings: SettingsDep, key: Reader) -> Response:
        """The ``results_url`` of an access request: what Lethe holds about the subject, read live."""
        row = opendsr.get(session, subject_request_id=subject_request_id, controller_id=key.id, admin=_admin(key))
        return signed(opendsr.access_results(session, row=row), d, settings, headers=NO_STORE)

    return router


cert_router = APIRouter(tags=["opendsr"], route_class=SpecErrorRoute, responses=SPEC_ERROR_RESPONSES)


PEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The certificate, PEM-encoded.",
          "content": {"application/x-pem-file": {"schema": {"type": "string"}}}},
}


@cert_router.get(CERT_PATH, response_class=Response, responses=PEM_RESPONSES)
def processor_certificate(settings: SettingsDep) -> Response:
    """The X.509 certificate (PEM) whose key signs OpenDSR responses and callbacks."""
    return Response(get_keys(settings).cert_pem, media_type="application/x-pem-file")


router = APIRouter()
router.include_router(cert_router)
for _d in DIALECTS.values():
    router.include_router(dialect_router(_d))
# Spec 3.4 wants the major version in the URL: OpenCompliance 1.0 also at /opendsr/v1/opencompliance_requests
# (its discovery there is the OpenGDPR one, which shares every field).
router.include_router(dialect_router(DIALECTS["opencompliance"], base="/opendsr/v1", meta=False))
