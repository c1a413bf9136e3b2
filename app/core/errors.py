"""One error hierarchy, rendered once as RFC 9457 problem+json (anchor: Polar ``exceptions.py``).

Services raise these; ``install_error_handlers`` renders them. No route catches them.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("lethe.errors")
PROBLEM = "application/problem+json"


class LetheError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str, *, code: str | None = None, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.code
        self.errors = errors
        self.headers = headers


class BadRequest(LetheError):
    status, code, title = 400, "bad_request", "Bad request"


class Unauthorized(LetheError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(LetheError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(LetheError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(LetheError):
    status, code, title = 409, "conflict", "Conflict"


class Gone(LetheError):
    status, code, title = 410, "gone", "Gone"


class Unprocessable(LetheError):
    status, code, title = 422, "validation_error", "Invalid input"


class Unavailable(LetheError):
    status, code, title = 503, "unavailable", "Service unavailable"


class Problem(BaseModel):
    """The body of every error outside ``/opendsr`` (RFC 9457 problem details); see ``problem``."""

    type: str = Field(description="A URI naming the problem type, ``https://lethe.dev/problems/{code}``.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str = Field(description="Machine-readable reason, e.g. ``not_found``, ``validation_error``.")
    instance: str = Field(description="The request path.")
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field errors (validation), inputs omitted.")


# Every client error of the API as OpenAPI documents it: the catch-all "4XX" also replaces FastAPI's
# default 422 (``HTTPValidationError``, a shape this API never sends).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "Client error (problem+json)", "content": {PROBLEM: {"schema": Problem.model_json_schema()}}},
}


def problem(status: int, title: str, detail: str, code: str, instance: str,
            errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://lethe.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
    }
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _clean_validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Drop the offending input values: they may carry personal data.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}
DB_RETRY_AFTER_S = 5


def database_unavailable(exc: BaseException) -> LetheError | None:
    """The 503 for a database that is down or dropped the connection; None for other errors.

    Answering these through a specific handler (not the catch-all) keeps the client's keep-alive
    connection open: Starlette's catch-all re-raises after its 500, and uvicorn then drops it.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    if isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        return Unavailable("The database is unavailable; retry shortly (with the same Idempotency-Key, a retry "
                           "never creates a second request).", code="database_unavailable",
                           headers={"Retry-After": str(DB_RETRY_AFTER_S)})
    return None


def _nul_in_text(exc: BaseException) -> bool:
    """psycopg refuses a NUL (0x00) in a text parameter (a path, query or body string) with a DataError."""
    from sqlalchemy.exc import DataError

    return isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig)


def install_error_handlers(app: FastAPI) -> None:
    from sqlalchemy.exc import DBAPIError

    @app.exception_handler(DBAPIError)
    async def _db(request: Request, exc: DBAPIError) -> JSONResponse:
        if _nul_in_text(exc):  # PostgreSQL text cannot hold NUL: the client's input, not our fault
            return problem(422, "Invalid input", "Text values may not contain the NUL (0x00) character.",
                           "validation_error", request.url.path)
        if (err := database_unavailable(exc)) is None:
            return await _unexpected(request, exc)
        log.warning("database unavailable on %s: %s", request.url.path, type(exc.orig).__name__)
        return problem(err.status, err.title, err.detail, err.code, request.url.path, headers=err.headers)

    @app.exception_handler(LetheError)
    async def _lethe(request: Request, exc: LetheError) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.code, request.url.path, exc.errors, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, "Invalid input", "The request failed validation.", "validation_error",
                       request.url.path, _clean_validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # A 405 is raised by the router after it matched the path: a route that speaks its own error
        # dialect (the OpenDSR spec's error object) renders it.
        if (render := getattr(request.scope.get("route"), "render_http_error", None)) is not None:
            return render(exc)
        code = HTTP_ERROR_CODES.get(exc.status_code, "http_error")
        return problem(exc.status_code, str(exc.detail), str(exc.detail), code, request.url.path,
                       headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal error", "An unexpected error occurred; it has been logged.",
                       "internal_error", request.url.path)
